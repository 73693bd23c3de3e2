"""capture -> infer -> write, overlapped: a reader thread, inference on the calling thread, a writer thread.

The queues between them are bounded, so memory stays flat whatever the input length. On a live
source the input queue holds one frame and a new frame replaces an unprocessed one: the output shows
the newest frame instead of falling further and further behind. Setting ``stop`` (e.g. from Ctrl-C,
see :func:`stop_on_sigint`) finishes the frame in flight, writes everything already inferred and
returns; the caller then closes the sink, which keeps what was written.
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from deepfusionnet.errors import DFNError
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

    Yields a dict whose ``"fired"`` entry says whether a signal came. Does nothing off the main thread.
    """
    state = {"fired": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def handler(signum, frame):
        if state["fired"]:
            raise KeyboardInterrupt
        state["fired"] = True
        stop.set()
        log("interrupted: finishing the current frame and closing the output (Ctrl-C again to abort)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_pipeline(
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
    stop = stop or threading.Event()
    done = threading.Event()  # ends the reader without claiming the user asked to stop
    stats = Stats()
    errors: list[BaseException] = []
    in_q = FrameQueue(1 if live else queue_size, drop=live)
    out_q = FrameQueue(queue_size)

    def halted() -> bool:
        return stop.is_set() or done.is_set()

    def reader() -> None:
        halt = _AnyEvent(stop, done)
        try:
            for item in source:
                if halted():
                    break
                if isinstance(item, Failure):
                    stats.failures.append(item)
                    continue
                stats.read += 1
                if not in_q.put(item, halt):
                    break
        except BaseException as exc:  # handed to the main thread, which re-raises it
            errors.append(exc)
        finally:
            in_q.put(DONE)

    def writer() -> None:
        failed = False
        while True:
            item = out_q.get()
            if item is DONE:
                return
            if failed:
                continue  # keep draining so the inference thread never blocks on a dead writer
            frame, result = item
            try:
                sink.write(frame, result)
                stats.written += 1
                if on_write is not None:
                    on_write(frame)
            except DFNError as exc:
                if per_item_errors:
                    stats.failures.append(Failure(frame.name, _reason(exc, frame)))
                else:
                    errors.append(exc)
                    failed = True
                    done.set()
            except BaseException as exc:
                errors.append(exc)
                failed = True
                done.set()
            if getattr(sink, "wants_stop", False):
                stop.set()

    threads = [threading.Thread(target=reader, name="dfn-reader", daemon=True),
               threading.Thread(target=writer, name="dfn-writer", daemon=True)]
    for t in threads:
        t.start()
    start = time.monotonic()
    try:
        while not halted():
            frame = in_q.get(_AnyEvent(stop, done))
            if frame is None or frame is DONE:
                break
            try:
                result = process(frame.image)
            except (DFNError, MemoryError) as exc:
                if not per_item_errors:
                    raise
                reason = "out of memory; try a smaller --tile" if isinstance(exc, MemoryError) else _reason(exc, frame)
                stats.failures.append(Failure(frame.name, reason))
                continue
            stats.processed += 1
            stats.dropped = in_q.dropped
            out_q.put((frame, result))
            if on_frame is not None:
                on_frame(stats)
    finally:
        stats.seconds = time.monotonic() - start
        out_q.put(DONE)
        threads[1].join()
        done.set()
        threads[0].join(timeout=10)  # a camera read in progress returns within a frame or a timeout
        stats.dropped = in_q.dropped
    if errors:
        raise errors[0]
    return stats


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
