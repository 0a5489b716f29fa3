"""Keeping the dock widgets within a small screen: texts wrap, choices stay narrow, forms scroll.

A Qt dock is at least as wide as its widest child and as tall as all its children together, and
the window grows to fit its docks. Left alone, one long error on a model card, a long path among
the recent checkpoints, or both widgets docked at once push the window past a laptop's screen and
squeeze napari's canvas away. So texts wrap at the dock's width (long words break after path
separators, the whole text stays in the tooltip), combo boxes ask for a few characters only,
and each widget's controls scroll inside its dock instead of setting its height.
"""

from __future__ import annotations

import re

from magicgui.widgets import Container, Label
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFrame,
    QListWidget,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
)

# Longer texts (an exception's message can run to pages) are cut; the tooltip keeps them whole.
_SHOWN_CHARS = 300
_ZERO_WIDTH_SPACE = "\u200b"  # a place Qt may break a line, drawn as nothing
_LONG_WORD = re.compile(r"\S{25,}")
_BREAK_AFTER = re.compile(r"([/\\_.,:;=-])")
_UNBROKEN_RUN = re.compile(r"[^/\\_.,:;=\-\u200b]{20}")
_COMBO_CHARACTERS = 8
_HINT_LINES = 20
_LIST_LINES = 8


class WrappedText(Label):
    """A text that wraps at the dock's width instead of widening it. ``value`` is the whole
    text; the label shows it with break points in long words (cut past ``_SHOWN_CHARS``), and
    its tooltip holds it all."""

    def __init__(self, value: str = "", **kwargs) -> None:
        self._text = ""
        super().__init__(**kwargs)
        self.native.setWordWrap(True)
        # Ignored: the dock's width decides, never the text's
        self.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Minimum)
        self.value = value

    def get_value(self) -> str:
        return self._text

    def set_value(self, value) -> None:
        self._text = str(value)
        shown = self._text
        if len(shown) > _SHOWN_CHARS:
            shown = shown[:_SHOWN_CHARS - 1] + "…"
        self.native.setText(_LONG_WORD.sub(lambda word: _breakable(word.group()), shown))
        self.native.setToolTip(self._text)


def _breakable(word: str) -> str:
    word = _BREAK_AFTER.sub(r"\1" + _ZERO_WIDTH_SPACE, word)
    return _UNBROKEN_RUN.sub(lambda run: run.group() + _ZERO_WIDTH_SPACE, word)


def keep_narrow(combo: QComboBox) -> None:
    """A combo box as wide as the dock gives it (a few characters at least), not as wide as its
    longest entry; the entries in its open list are shown whole."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(_COMBO_CHARACTERS)


class ScrollingDock(Container):
    """A dock widget whose controls (``self.form``) scroll up and down inside the dock.

    napari docks a magicgui widget's ``native`` (for magicgui's own scrollable container, the
    widget *inside* its scroll area), so the scroll area is put in this container's layout, and
    napari's ``reset_choices`` (called at every change of the layer list) is passed on."""

    def __init__(self) -> None:
        super().__init__(labels=False)
        self.form: Container | None = None

    def set_controls(self, widgets, below=()) -> None:
        """``widgets`` (magicgui) in a form, then ``below`` (Qt widgets), then room to spare."""
        widgets = list(widgets)
        for widget in widgets:
            if isinstance(widget.native, QComboBox):
                keep_narrow(widget.native)
            elif isinstance(widget.native, QListWidget):  # the dock's width, not Qt's hint
                widget.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
                widget.native.setMaximumHeight(_LIST_LINES * widget.native.fontMetrics().height())
        self.form = Container(widgets=widgets)
        for widget in below:
            self.form.native.layout().addWidget(widget)
        self.form.native.layout().addStretch()  # rows keep together at the top
        layout = self.native.layout()
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(_VerticalScroll(self.form.native))
        self._first_show = _OnFirstShow(self.native, _share_the_dock_area)

    def reset_choices(self, *_) -> None:
        if self.form is not None:
            self.form.reset_choices()


class _OnFirstShow(QObject):
    def __init__(self, widget, call) -> None:
        super().__init__(widget)
        self._call = call
        widget.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # Qt's name
        if event.type() == QEvent.Show:
            watched.removeEventFilter(self)
            QTimer.singleShot(0, lambda: self._call(watched))  # once the dock is laid out
        return False


def _share_the_dock_area(widget) -> None:
    """A dock that joins others stacked in the same area of the window gets an even share of
    its height (Qt would leave the first dock its height and the new one a sliver)."""
    dock = widget.parentWidget()
    window = dock.parentWidget() if isinstance(dock, QDockWidget) else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return
    area = window.dockWidgetArea(dock)
    stacked = [d for d in window.findChildren(QDockWidget)
               if d.isVisible() and not d.isFloating() and window.dockWidgetArea(d) == area
               and not any(t.isVisible() for t in window.tabifiedDockWidgets(d))]
    if len(stacked) > 1:
        orientation = Qt.Vertical if area in (Qt.LeftDockWidgetArea,
                                              Qt.RightDockWidgetArea) else Qt.Horizontal
        window.resizeDocks(stacked, [1] * len(stacked), orientation)


class _VerticalScroll(QScrollArea):
    """Scrolls up and down only: as wide as its contents need, as short as the dock is."""

    def __init__(self, contents) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.NoFrame)
        self.setWidget(contents)

    def _width(self, contents_width: int) -> int:
        return contents_width + self.verticalScrollBar().sizeHint().width()

    def minimumSizeHint(self) -> QSize:  # Qt's names
        return QSize(self._width(self.widget().minimumSizeHint().width()),
                     super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:
        # At most about half a laptop screen tall, so that two docks stacked share the height
        # instead of the first taking it all.
        hint = self.widget().sizeHint()
        return QSize(self._width(hint.width()),
                     min(hint.height(), _HINT_LINES * self.fontMetrics().height()))
