"""The first Ctrl-C or SIGTERM as a flag a loop checks; the second one stops at once.

Used by streams (finish the frame in flight, close the output) and training (finish the step, write a
checkpoint): stopping between units of work keeps what was written whole and resumable.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def first_signal_as_flag(on_first: Callable[[int], None] | None = None) -> Iterator[dict]:
    """While active, the first SIGINT/SIGTERM sets ``flag["signal"]`` (and calls ``on_first(signum)``); a
    second one raises KeyboardInterrupt. Off the main thread no handler is installed (the flag stays None).
    """
    flag: dict = {"signal": None}

    def handler(signum, _frame):
        if flag["signal"] is not None:
            raise KeyboardInterrupt
        flag["signal"] = signum
        if on_first is not None:
            on_first(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
