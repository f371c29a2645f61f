"""Deleting directories after the process that discards them has moved on (or ended).

`delete_later(paths, hold)` starts one detached deleter, `python3 -I -S -c ...` (the standard
library only: no site, no environment variables, nothing of build-image imported), and returns at
once. The deleter runs in a session of its own, its standard streams on /dev/null, with no fd of
the caller's open but those in HOLD: it removes PATHS and ends, and only then lets go of HOLD.
Locks held through those fds (flock) pass to it with them (a lock belongs to the open file
description, and the deleter's copies keep it open), so the caller may close its own copies at
once without anyone seeing the locks free before the deletion is done. Ctrl-C on the terminal
(the foreground process group's SIGINT), the caller's exit (os._exit too) and a parent-death
signal do not reach it; a SIGKILL leaves the rest of PATHS for whoever cleans up after dead
processes, as any killed process's work would.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Iterable

_DELETER = "import shutil,sys\nfor p in sys.argv[1:]:\n shutil.rmtree(p,ignore_errors=True)\n"

# Deleters started by this process, reaped as more start: a long-lived caller keeps no zombies.
_started: list[subprocess.Popen] = []


def delete_later(paths: Iterable[str], hold: Iterable[int] = ()) -> None:
    """Remove the directories PATHS (absolute) in a detached process that holds the fds HOLD
    until it is done. OSError if it could not be started (the caller then deletes them itself)."""
    paths = list(paths)
    if not paths:
        return
    _started[:] = [p for p in _started if p.poll() is None]
    _started.append(subprocess.Popen(
        [sys.executable or "python3", "-I", "-S", "-c", _DELETER, *paths],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=True, pass_fds=tuple(hold), start_new_session=True))
