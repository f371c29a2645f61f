"""Cache mounts (RUN --mount=type=cache): directories kept across builds, never in a layer.

    ROOT/cache/mounts/<key>/lock     serialises making a new directory for the key
    ROOT/cache/mounts/<key>/<n>/     one directory of the cache (0, 1, ...); a user holds flock
                                     on it: LOCK_SH when sharing it, LOCK_EX when it must be alone
    ROOT/cache/mounts/<key>/new-*/   a directory being filled; renamed to <n> once complete

The sharing modes follow BuildKit's: every `shared` user of a key gets the same directory at
the same time; a `private` user gets a directory nobody else is using, made fresh (from the
seed) when all are in use; a `locked` user waits until it has directory 0 to itself. The locks
are flock(2) on the directories, so they hold between build-image processes sharing a root and
die with the process that held them.

The content of a cache mount is not part of any cache key, and --no-cache keeps it (as
BuildKit does): only the key names which cache a step uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator

from builder.plumbing.files import locked

SHARING_MODES = ("shared", "private", "locked")
_WAIT_INTERVAL = 0.1


class CacheMountStore:
    def __init__(self, root: str):
        self.root = root

    @staticmethod
    def key(*parts: str) -> str:
        """A directory name for a cache identified by PARTS (id, seed, ownership)."""
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]

    @contextlib.contextmanager
    def acquire(self, key: str, sharing: str, seed: Callable[[str], None],
                cancelled: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """A directory of cache KEY for the duration of the block.

        SEED(dir) fills a new, empty directory (content, mode and owner of its root) before
        anyone can see it. CANCELLED is polled while a `locked` user waits.
        """
        if sharing not in SHARING_MODES:
            raise ValueError(f"unsupported sharing value {sharing!r}")
        base = os.path.join(self.root, key)
        os.makedirs(base, mode=0o700, exist_ok=True)
        if sharing == "locked":
            fd, path = self._wait_for_first(base, seed, cancelled)
        else:
            mode = fcntl.LOCK_SH if sharing == "shared" else fcntl.LOCK_EX
            taken = self._take_free(base, mode)
            fd, path = taken if taken is not None else self._make(base, seed, mode)
        try:
            yield path
        finally:
            os.close(fd)  # releases the flock

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _numbered(base: str) -> list[str]:
        names = [n for n in os.listdir(base) if n.isdigit()]
        return [os.path.join(base, n) for n in sorted(names, key=int)]

    def _take_free(self, base: str, mode: int) -> tuple[int, str] | None:
        for path in self._numbered(base):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd, path
        return None

    def _make(self, base: str, seed: Callable[[str], None], mode: int) -> tuple[int, str]:
        """A new numbered directory, locked with MODE."""
        with locked(os.path.join(base, "lock")):
            if mode == fcntl.LOCK_SH:
                # Another shared user may have made one while we waited for the key lock.
                taken = self._take_free(base, mode)
                if taken is not None:
                    return taken
            existing = self._numbered(base)
            number = int(os.path.basename(existing[-1])) + 1 if existing else 0
            return _new_dir(base, number, seed, mode)

    def _wait_for_first(self, base: str, seed: Callable[[str], None],
                        cancelled: Callable[[], bool]) -> tuple[int, str]:
        path = os.path.join(base, "0")
        with locked(os.path.join(base, "lock")):
            if not os.path.isdir(path):
                return _new_dir(base, 0, seed, fcntl.LOCK_EX)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd, path
                except BlockingIOError:
                    if cancelled():
                        raise InterruptedError("cancelled while waiting for a locked cache mount") from None
                    time.sleep(_WAIT_INTERVAL)  # polled, so that a cancelled build stops waiting
        except BaseException:
            os.close(fd)
            raise


def _new_dir(base: str, number: int, seed: Callable[[str], None], mode: int) -> tuple[int, str]:
    """BASE/NUMBER made whole (seeded under a temporary name), locked with MODE. The caller holds
    the key lock."""
    _remove_abandoned(base)
    temp = tempfile.mkdtemp(prefix="new-", dir=base)
    fd = os.open(temp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # The lock is on the inode: it stays held through the rename.
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        seed(temp)
        path = os.path.join(base, str(number))
        os.rename(temp, path)
    except BaseException:
        os.close(fd)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return fd, path


def _remove_abandoned(base: str) -> None:
    """Delete new-* directories whose maker died mid-seed (nobody holds their lock)."""
    for name in os.listdir(base):
        if not name.startswith("new-"):
            continue
        path = os.path.join(base, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
