"""The napari workers one dock widget starts, and a clean stop when its window closes.

When napari's window closes it asks running workers to quit but does not wait for them: a
fine-tuning step still running then emits into Qt objects already deleted, and Python aborts
(SIGABRT) on its way out. So each widget keeps its running workers, and before its window
closes asks them to stop and waits (delivering their last signals, so the widget keeps what
it would on Stop or Cancel) — after asking the user, where the widget has
something to lose.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_warning
from qtpy.QtCore import QCoreApplication, QEvent, QObject, QThread

# A worker stops at its next yield: a batch or a training step, seconds on a CPU. A model load
# or a save (which never stop half-way) take about as long.
STOP_TIMEOUT_S = 60.0


class Workers(QObject):
    """Starts a widget's napari workers and stops them before the widget's window closes.

    ``may_close(by_user)`` (optional) is asked first when the window closes, ``by_user`` saying
    whether a person closed it; returning False keeps the window open (e.g. the user chose
    Cancel over losing an unsaved model)."""

    def __init__(self, widget, may_close: Callable[[bool], bool] | None = None) -> None:
        super().__init__(widget)  # dies with the widget, and its event filter with it
        self._widget = widget
        self._may_close = may_close
        self._running: list = []
        self._window = lambda: None  # a weak reference: the window must not outlive napari

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def start(self, function, *args, on_event=None, on_error=None, on_finished=None,
              on_returned=None, **kwargs):
        """Run ``function`` in a napari worker (a generator's yields go to ``on_event``);
        errors reach ``on_error`` instead of napari's traceback dialog. Returns the worker."""
        self._watch_window()
        worker = create_worker(function, *args, _ignore_errors=True, **kwargs)
        for signal, slot in (("yielded", on_event), ("errored", on_error),
                             ("finished", on_finished), ("returned", on_returned)):
            if slot is not None:
                getattr(worker, signal).connect(slot)
        # after the widget's own slot: once a worker is gone from here, its widget is done too
        worker.finished.connect(lambda: self._running.remove(worker))
        self._running.append(worker)
        worker.start()
        return worker

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Ask every running worker to stop and wait until they have; True if they all did."""
        for worker in self._running:
            # A function (a load, a save) cannot stop half-way, and one asked to quit drops
            # its result: let it finish. A generator stops at its next yield.
            if isinstance(worker, GeneratorWorker):
                worker.quit()
        in_event_loop = QThread.currentThread().loopLevel() > 0
        deadline = time.monotonic() + timeout_s
        while self._running and time.monotonic() < deadline:
            if in_event_loop:  # workers started here begin on a timer (superqt)
                QCoreApplication.processEvents()
            else:
                # Outside any event loop (a script's viewer.close()) processing every event
                # would also carry out the deletions napari's closing code has scheduled, under
                # its feet; the workers' signals to the widget's slots are all that is needed.
                QCoreApplication.sendPostedEvents(None, QEvent.MetaCall)
            time.sleep(0.01)
        return not self._running

    def _watch_window(self) -> None:
        # The window the widget is docked in is known only once it is docked, which it is by
        # the time the user starts anything.
        window, watched = self._widget.window(), self._window()
        if window is not watched:
            if watched is not None:
                watched.removeEventFilter(self)
            window.installEventFilter(self)
            self._window = weakref.ref(window)

    def eventFilter(self, watched, event) -> bool:  # Qt's name
        if event.type() == QEvent.Close and watched is self._window():
            # A person closes the window with its button (a spontaneous event) or from the
            # running event loop (a menu, a shortcut, napari's console); a script calling
            # viewer.close() outside any loop is not there to be asked.
            by_user = event.spontaneous() or QThread.currentThread().loopLevel() > 0
            if self._may_close is not None and not self._may_close(by_user):
                event.ignore()
                return True  # the window stays open
            if not self.stop_all():
                show_warning("VM-UNet: a task did not stop in time; the window closes anyway")
        return False
