"""A small live plot of training loss and validation Dice, drawn with QPainter.

Two curves share the x axis (steps): the loss scaled to its own maximum, the Dice on [0, 1].
No plotting library: this is all the Fine-tune widget needs, and it redraws in well under a
millisecond, so the GUI stays responsive however often steps arrive.
"""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor(90, 160, 255)
DICE_COLOUR = QColor(255, 170, 60)


class TrainingPlot(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
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

    def paintEvent(self, _event):  # Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        left, top, right, bottom = 4, 16, self.width() - 4, self.height() - 4
        painter.setPen(QPen(QColor(120, 120, 120), 1))
        painter.drawRect(left, top, right - left, bottom - top)
        painter.setPen(LOSS_COLOUR)
        painter.drawText(left, 12, "loss")
        painter.setPen(DICE_COLOUR)
        painter.drawText(left + 40, 12, "validation Dice (0–1)")

        def x(step):
            return left + (right - left) * step / self.steps

        def curve(points, top_value, colour):
            if not points:
                return
            scale = top_value or 1.0
            polygon = QPolygonF([QPointF(x(s), bottom - (bottom - top) * min(v / scale, 1.0))
                                 for s, v in points])
            painter.setPen(QPen(colour, 2, Qt.SolidLine))
            painter.drawPolyline(polygon)
            if len(points) == 1:
                painter.drawEllipse(polygon[0], 2, 2)

        curve(self.loss, max(v for _, v in self.loss) if self.loss else 1.0, LOSS_COLOUR)
        curve(self.dice, 1.0, DICE_COLOUR)
        painter.end()
