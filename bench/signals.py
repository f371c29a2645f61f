"""Starting a child so that Ctrl-C or SIGTERM cannot leave it running unknown to us.

An interrupt that lands between fork() and the Popen being stored somewhere leaks the child: no
clean-up code knows about it. Inside `interrupts_held()` SIGINT and SIGTERM wait; store the Popen
before the block ends and the interrupt, if any, arrives after that (as KeyboardInterrupt).

    with interrupts_held() as mask:
        self.proc = subprocess.Popen(argv, preexec_fn=restore_mask(mask))
"""

from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator

_INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def interrupts_held() -> Iterator[set[signal.Signals]]:
    """Block SIGINT and SIGTERM inside; yields the mask to give back to children."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        yield previous
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def restore_mask(mask: set[signal.Signals]) -> Callable[[], None]:
    """A preexec_fn: the child must not inherit the blocked interrupts (exec keeps the mask)."""
    return lambda: signal.pthread_sigmask(signal.SIG_SETMASK, mask)
