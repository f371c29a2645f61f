"""Waiting for a store root to be unused, as `prune` does: a build that discarded scratch dirs
leaves them to a detached deleter that holds the root's lock shared until they are gone
(builder/snapshot/snapshots.py), so what a build leaves behind is known only after that."""

from __future__ import annotations

import fcntl
import os
import time


def wait_until_unused(root: str, timeout: float = 120) -> None:
    """Return once nobody holds ROOT/lock (polled, never blocking past TIMEOUT seconds)."""
    deadline = time.monotonic() + timeout
    with open(os.path.join(root, "lock"), "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{root} is still in use after {timeout} s (a deleter that never ends?)")
                time.sleep(0.02)
            else:
                return  # closing the file lets go of the lock
