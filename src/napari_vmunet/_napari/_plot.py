"""A small live plot of training loss and validation Dice, drawn with QPainter.

Two curves share the x axis (steps): the loss on the left axis, from 0 to its largest value so
far, and the validation Dice on the right axis, from 0 to 1. The axes carry their end values and
the legend the latest ones. No plotting library: this is all the Fine-tune widget needs, and it
redraws in well under a millisecond, so the GUI stays responsive however often steps arrive.
"""

from __future__ import annotations

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor(90, 160, 255)
DICE_COLOUR = QColor(255, 170, 60)
AXIS_COLOUR = QColor(150, 150, 150)


def _number(value: float) -> str:
    return f"{value:.3g}"


class TrainingPlot(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setToolTip("training loss (blue, left axis) and Dice on the held-out corrected "
                        "slices (orange, right axis) against the training step")
        self.steps = 1
        self.loss: list[tuple[int, float]] = []
        self.dice: list[tuple[int, float]] = []

    def reset(self, steps: int) -> None:
        self.steps, self.loss, self.dice = max(1, steps), [], []
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        self.loss.append((step, loss))
        self.update()

    def add_dice(self, step: int, dice: float) -> None:
        self.dice.append((step, dice))
        self.update()

    def _loss_top(self) -> float:
        return max((v for _, v in self.loss), default=0.0) or 1.0

    def axis_ends(self) -> dict[str, tuple[str, str]]:
        """What each axis says at its two ends, as drawn."""
        return {"step": ("0", str(self.steps)), "loss": ("0", _number(self._loss_top())),
                "Dice": ("0", "1")}

    def legend(self) -> tuple[str, str]:
        """The legend, with the latest loss and validation Dice."""
        loss = f"loss {_number(self.loss[-1][1])}" if self.loss else "loss"
        dice = f"Dice {self.dice[-1][1]:.3f}" if self.dice else "Dice"
        return loss, dice

    def paintEvent(self, _event):  # Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        metrics = painter.fontMetrics()
        ends = self.axis_ends()
        text_height = metrics.height()
        left = 6 + max(metrics.horizontalAdvance(t) for t in ends["loss"])
        right = self.width() - 6 - metrics.horizontalAdvance("1")
        top, bottom = text_height + 6, self.height() - text_height - 4

        loss_text, dice_text = self.legend()
        painter.setPen(LOSS_COLOUR)
        painter.drawText(left, text_height, loss_text)
        painter.setPen(DICE_COLOUR)
        painter.drawText(left + metrics.horizontalAdvance(loss_text) + 16, text_height,
                         dice_text)

        painter.setPen(QPen(AXIS_COLOUR, 1))
        painter.drawRect(left, top, right - left, bottom - top)

        def label(text, x, y, anchor):
            """``text`` centred on height ``y``, its left end, right end or centre at ``x``."""
            width = metrics.horizontalAdvance(text)
            start = {"left": x, "right": x - width, "centre": x - width / 2}[anchor]
            painter.drawText(QRectF(start, y - text_height / 2, width, text_height),
                             Qt.AlignCenter, text)

        painter.setPen(LOSS_COLOUR)
        label(ends["loss"][1], left - 3, top, "right")
        label(ends["loss"][0], left - 3, bottom, "right")
        painter.setPen(DICE_COLOUR)
        label(ends["Dice"][1], right + 3, top, "left")
        label(ends["Dice"][0], right + 3, bottom, "left")
        painter.setPen(AXIS_COLOUR)
        below = bottom + 2 + text_height / 2
        label(ends["step"][0], left, below, "left")
        label(ends["step"][1], right, below, "right")
        label("step", (left + right) / 2, below, "centre")

        def x(step):
            return left + (right - left) * step / self.steps

        def curve(points, top_value, colour):
            if not points:
                return
            polygon = QPolygonF([QPointF(x(s), bottom - (bottom - top) * min(v / top_value, 1.0))
                                 for s, v in points])
            painter.setPen(QPen(colour, 2, Qt.SolidLine))
            painter.drawPolyline(polygon)
            if len(points) == 1:
                painter.drawEllipse(polygon[0], 2, 2)

        curve(self.loss, self._loss_top(), LOSS_COLOUR)
        curve(self.dice, 1.0, DICE_COLOUR)
        painter.end()
