"""Starting a child so that Ctrl-C or SIGTERM cannot leave it running unknown to us.

An interrupt that lands between fork() and the Popen being stored somewhere leaks the child: no
clean-up code knows about it. Inside `interrupts_held()` SIGINT and SIGTERM wait; store the Popen
before the block ends and the interrupt, if any, arrives after that (as KeyboardInterrupt).

    with interrupts_held() as mask:
        self.proc = subprocess.Popen(argv, preexec_fn=restore_mask(mask))

Blocking the signals in this thread is not enough: the kernel hands a signal sent to the process
to any thread that does not block it (a timer's, a log reader's), and Python then runs the handler
in the main thread at its next bytecode, in the middle of Popen. So the main thread's handlers
also only note the signal inside the block, and it is raised again once the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_held() -> Iterator[set[signal.Signals]]:
    """Hold SIGINT and SIGTERM back inside; yields the signal mask to give back to children."""
    noted: list[int] = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {number: signal.signal(number, lambda number, frame: noted.append(number))
                    for number in _INTERRUPTS}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        yield previous
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)   # one blocked here is noted now
        for number, handler in handlers.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(noted):
            signal.raise_signal(number)


def restore_mask(mask: set[signal.Signals]) -> Callable[[], None]:
    """A preexec_fn: the child must not inherit the blocked interrupts (exec keeps the mask)."""
    return lambda: signal.pthread_sigmask(signal.SIG_SETMASK, mask)
