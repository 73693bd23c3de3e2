"""capture -> infer -> write, overlapped: a reader thread, inference on the calling thread, a writer thread.

The queues between them are bounded, so memory stays flat whatever the input length. On a live
source the input queue holds one frame and a new frame replaces an unprocessed one: the output shows
the newest frame instead of falling further and further behind. Setting ``stop`` (e.g. from Ctrl-C,
see :func:`stop_on_sigint`) finishes the frame in flight, writes everything already inferred and
returns; the caller then closes the sink, which keeps what was written.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.signals import first_signal_as_flag
from deepfusionnet.runtime.sources import Failure, Frame

DONE = object()  # end-of-stream marker; never dropped, never blocked on


@dataclass
class Stats:
    read: int = 0
    processed: int = 0
    written: int = 0
    dropped: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


class FrameQueue:
    """A bounded FIFO between two threads; with ``drop=True`` a full queue discards its oldest frame."""

    def __init__(self, maxsize: int, drop: bool = False) -> None:
        self.maxsize, self.drop = max(1, maxsize), drop
        self.items: collections.deque = collections.deque()
        self.cv = threading.Condition()
        self.dropped = 0

    def put(self, item, stop: threading.Event | None = None) -> bool:
        """Add ``item``; blocks while full (unless dropping). False if ``stop`` was set while waiting."""
        with self.cv:
            if item is not DONE and self.drop:
                while len(self.items) >= self.maxsize and self.items[0] is not DONE:
                    self.items.popleft()
                    self.dropped += 1
            elif item is not DONE:
                while len(self.items) >= self.maxsize:
                    if stop is not None and stop.is_set():
                        return False
                    self.cv.wait(0.05)
            self.items.append(item)
            self.cv.notify_all()
            return True

    def get(self, stop: threading.Event | None = None):
        """The next item; ``None`` if ``stop`` is set while the queue is empty."""
        with self.cv:
            while not self.items:
                if stop is not None and stop.is_set():
                    return None
                self.cv.wait(0.05)
            item = self.items.popleft()
            self.cv.notify_all()
            return item


class FpsMeter:
    """Frames per second over a sliding window of recent frames."""

    def __init__(self, window: int = 30) -> None:
        self.times: collections.deque = collections.deque(maxlen=window)

    def tick(self) -> None:
        self.times.append(time.monotonic())

    @property
    def fps(self) -> float:
        if len(self.times) < 2:
            return 0.0
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


@contextmanager
def stop_on_sigint(stop: threading.Event, log: Callable[[str], None] | None = None) -> Iterator[dict]:
    """While active, the first Ctrl-C (or SIGTERM) sets ``stop`` so the run finishes cleanly; a second
    one raises KeyboardInterrupt.

    Yields a dict whose ``"signal"`` entry is the signal that came, or None. Does nothing off the main
    thread (:func:`deepfusionnet.runtime.signals.first_signal_as_flag`).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def first(_signum: int) -> None:
        stop.set()
        log("interrupted: finishing the current frame and closing the output (Ctrl-C again to abort)")

    with first_signal_as_flag(first) as flag:
        yield flag


class _Stream:
    """One run of :func:`run_stream`: the queues, the shared stats and the three loops over them."""

    def __init__(self, source, process, sink, live: bool, queue_size: int, stop: threading.Event,
                 per_item_errors: bool, on_write, on_frame) -> None:
        self.source, self.process, self.sink = source, process, sink
        self.stop, self.per_item_errors = stop, per_item_errors
        self.on_write, self.on_frame = on_write, on_frame
        self.done = threading.Event()  # ends the reader without claiming the user asked to stop
        self.stats = Stats()
        self.errors: list[BaseException] = []
        self.in_q = FrameQueue(1 if live else queue_size, drop=live)
        self.out_q = FrameQueue(queue_size)
        self.halt = _AnyEvent(stop, self.done)

    def read(self) -> None:
        """The reader thread: source -> input queue (failures straight into the stats)."""
        try:
            for item in self.source:
                if self.halt.is_set():
                    break
                if isinstance(item, Failure):
                    self.stats.failures.append(item)
                    continue
                self.stats.read += 1
                if not self.in_q.put(item, self.halt):
                    break
        except BaseException as exc:  # handed to the main thread, which re-raises it
            self.errors.append(exc)
        finally:
            self.in_q.put(DONE)

    def _fail_writer(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.done.set()

    def write(self) -> None:
        """The writer thread: output queue -> sink, until DONE (draining even after a failure)."""
        failed = False
        while True:
            item = self.out_q.get()
            if item is DONE:
                return
            if failed:
                continue  # keep draining so the inference thread never blocks on a dead writer
            frame, result = item
            try:
                self.sink.write(frame, result)
                self.stats.written += 1
                if self.on_write is not None:
                    self.on_write(frame)
            except DFNError as exc:
                if self.per_item_errors:
                    self.stats.failures.append(Failure(frame.name, _reason(exc, frame)))
                else:
                    self._fail_writer(exc)
                    failed = True
            except BaseException as exc:
                self._fail_writer(exc)
                failed = True
            if getattr(self.sink, "wants_stop", False):
                self.stop.set()

    def infer(self) -> None:
        """This thread: input queue -> ``process`` -> output queue, until the input ends or a halt."""
        while not self.halt.is_set():
            frame = self.in_q.get(self.halt)
            if frame is None or frame is DONE:
                break
            try:
                result = self.process(frame.image)
            except (DFNError, MemoryError) as exc:
                if not self.per_item_errors:
                    raise
                reason = ("out of memory; try a smaller --tile" if isinstance(exc, MemoryError)
                          else _reason(exc, frame))
                self.stats.failures.append(Failure(frame.name, reason))
                continue
            self.stats.processed += 1
            self.stats.dropped = self.in_q.dropped
            self.out_q.put((frame, result))
            if self.on_frame is not None:
                self.on_frame(self.stats)


def run_stream(
    source: Iterable[Frame | Failure],
    process: Callable[[np.ndarray], np.ndarray],
    sink,
    *,
    live: bool | None = None,
    queue_size: int = 4,
    stop: threading.Event | None = None,
    per_item_errors: bool = False,
    on_write: Callable[[Frame], None] | None = None,
    on_frame: Callable[[Stats], None] | None = None,
) -> Stats:
    """Read ``source``, run ``process`` on each frame's image and ``sink.write`` the results.

    ``per_item_errors``: a :class:`DFNError` while processing or writing one item becomes a
    :class:`Failure` in the stats (batches of files) instead of ending the run (streams).
    ``on_write`` is called on the writer thread after each write, ``on_frame`` on this thread after
    each inference (progress bars, live fps). Errors from the reader or writer are re-raised here.
    """
    live = bool(getattr(source, "live", False)) if live is None else live
    run = _Stream(source, process, sink, live, queue_size, stop or threading.Event(), per_item_errors,
                  on_write, on_frame)
    reader = threading.Thread(target=run.read, name="dfn-reader", daemon=True)
    writer = threading.Thread(target=run.write, name="dfn-writer", daemon=True)
    reader.start()
    writer.start()
    start = time.monotonic()
    try:
        run.infer()
    finally:
        run.stats.seconds = time.monotonic() - start
        run.out_q.put(DONE)
        writer.join()
        run.done.set()
        reader.join(timeout=10)  # a camera read in progress returns within a frame or a timeout
        run.stats.dropped = run.in_q.dropped
    if run.errors:
        raise run.errors[0]
    return run.stats


class _AnyEvent:
    """``is_set()`` over several events (what FrameQueue polls while waiting)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def _reason(exc: Exception, frame: Frame) -> str:
    text = str(exc)
    prefix = f"{frame.name}: "
    return text[len(prefix):] if text.startswith(prefix) else text
