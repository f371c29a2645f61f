"""Unpacked layers on disk, keyed by chain ID, each usable as an overlay lower dir.

    ROOT/snapshots/<key>         a committed snapshot (key: first 32 hex digits of the chain ID);
                                 ROOT/snapshots.naive/... the same for the naive snapshotter
    ROOT/snapshots.tmp/<name>/   work in progress: a scratch upper/work pair or an unpack; its
                                 owner holds flock on the directory, so a dir nobody locks was
                                 left by a killed process and `clean_stale` may delete it
    ROOT/snapshots.tmp/trash-*/  a discarded scratch dir waiting to be deleted (see below), still
                                 flock-ed: by the build, then by its deleter
    ROOT/snapshots.locks/<key>   one lock file per key, serialising ensure/commit/remove between
                                 processes; empty, kept (deleting a flock file races its waiters)

Snapshot paths are short because the kernel reads overlay options from one page: 32 hex digits
(128 bits) keep `lowerdir=` small while a collision would still take about 2^64 work.
Everything is made visible by rename(2) within one filesystem, so a reader sees a whole snapshot
or none.

Deleting off the critical path: a step's scratch dir whose upper dir is not committed (the step
failed, its writes were thrown away, or a commit found the chain ID committed already, as every
`--no-cache` rebuild of an unchanged step does) may hold thousands of files, and unlinking them
costs a build seconds on a slow filesystem. While a `Store` holds the root's shared lock it has
this store `defer_deletes`: such a dir is renamed to trash-* at once and kept flock-ed, and when
the store is released, `hand_off_trash` starts one detached deleter for all of it
(builder/plumbing/detached.py) that inherits the flocks and the root's shared lock with their
fds. So `prune` and `fsck --repair` (exclusive) wait for the deletion, no crash cleanup runs
while it does (`clean_stale` runs only when nobody holds the root), and if the deleter is killed
the trash is one more dir nobody locks, which the next `clean_stale` removes. Nothing else reads
snapshots.tmp. Scratch that hard-links files kept elsewhere (a naive diff after its commit, a
tree of context links) is still deleted at once: its links would change the link counts that
the naive differ and the context checksums read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from typing import BinaryIO, Callable

from builder.errors import StoreError
from builder.plumbing.files import locked
from builder.plumbing.records import dataclass, field

_KEY_LEN = 32


def _key(chain_id: str) -> str:
    algo, _, hexpart = chain_id.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise StoreError(f"not a sha256 chain ID: {chain_id!r}")
    return hexpart[:_KEY_LEN]


class _TempDir:
    """A new dir under snapshots.tmp, flock-ed by this process until `close` deletes it."""

    def __init__(self, parent: str, prefix: str):
        while True:
            self.path = tempfile.mkdtemp(prefix=prefix, dir=parent)
            try:
                self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if os.path.isdir(self.path):
                return
            # clean_stale took it for a dead process's dir between mkdtemp and flock: retry
            os.close(self._fd)

    def close(self) -> None:
        if self._fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        self.unlock()

    @property
    def fd(self) -> int | None:
        return self._fd

    def unlock(self) -> None:
        """Let go of the directory without deleting it (its deleter holds the flock now)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "_TempDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Scratch:
    """A fresh overlay upper dir and work dir, removed on exit unless the upper was committed
    (now, or later by a deleter when its store defers deletes)."""

    upperdir: str
    workdir: str
    _temp: _TempDir = field(repr=False, compare=False)
    _discard: Callable[["Scratch"], None] | None = field(default=None, repr=False, compare=False)

    def close(self) -> None:
        if self._discard is not None:
            self._discard(self)
        else:
            self._temp.close()

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def store_name(kind: str) -> str:
    """The directory under the store root of snapshotter KIND's snapshots: an overlay snapshot is
    one layer, a naive one a whole tree, so each kind keeps its own."""
    return "snapshots" if kind == "overlay" else f"snapshots.{kind}"


class SnapshotStore:
    """Unpacked layers keyed by chain ID under ROOT/snapshots/, each usable as an overlay lower dir."""

    def __init__(self, root: str, name: str = "snapshots"):
        self.root = root
        self._snapshots = os.path.join(root, name)
        self._tmp = os.path.join(root, name + ".tmp")
        self._locks = os.path.join(root, name + ".locks")
        for d in (self._snapshots, self._tmp, self._locks):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._trash: list[_TempDir] | None = None  # None: discarded scratch is deleted at once

    def path(self, chain_id: str) -> str:
        return os.path.join(self._snapshots, _key(chain_id))

    def has(self, chain_id: str) -> bool:
        return os.path.isdir(self.path(chain_id))

    def ensure(self, chain_id: str, open_layer: Callable[[], BinaryIO]) -> str:
        """The snapshot's directory, unpacking the layer OPEN_LAYER returns if it is missing."""
        def unpack(fs: str) -> None:
            with open_layer() as stream:
                from builder.snapshot.layers import unpack_layer  # tarfile & co. only when unpacking

                unpack_layer(stream, fs)

        return self.ensure_with(chain_id, unpack)

    def ensure_with(self, chain_id: str, fill: Callable[[str], None]) -> str:
        """The snapshot's directory; if it is missing, FILL(dir) makes it in an empty work dir
        that is then renamed into place."""
        dest = self.path(chain_id)
        if os.path.isdir(dest):
            return dest
        with self._locked(chain_id):  # one process makes it; the others wait and reuse it
            if os.path.isdir(dest):
                return dest
            with _TempDir(self._tmp, "unpack-") as tmp:
                fs = os.path.join(tmp.path, "fs")
                os.mkdir(fs, 0o755)
                os.chmod(fs, 0o755)  # becomes the merged root's mode when it is the top layer
                fill(fs)
                os.rename(fs, dest)
        return dest

    def scratch(self, discard_later: bool = False) -> Scratch:
        """A fresh upper/work dir pair. DISCARD_LATER: a step's own, whose uncommitted upper dir
        may be left to the deleter (its files are its own inodes: no hard links to anything kept)."""
        temp = _TempDir(self._tmp, "scratch-")
        try:
            upper, work = os.path.join(temp.path, "upper"), os.path.join(temp.path, "work")
            os.mkdir(upper, 0o755)
            os.chmod(upper, 0o755)  # the upper dir's mode is the container root's mode
            os.mkdir(work, 0o700)
        except BaseException:
            temp.close()
            raise
        return Scratch(upperdir=upper, workdir=work, _temp=temp,
                       _discard=self._discard_later if discard_later else None)

    def defer_deletes(self) -> None:
        """From now on a step's discarded scratch dir whose upper dir was not committed is
        renamed to trash-* and kept locked, for `hand_off_trash` to have deleted. The caller holds
        the store root's shared lock until it calls that."""
        if self._trash is None:
            self._trash = []

    def hand_off_trash(self, root_lock: int) -> None:
        """Stop deferring; one detached deleter removes the trash so far, holding each trash dir's
        flock and ROOT_LOCK (the fd of the root's shared lock: the caller may close its copy at
        once) until it is done. If it cannot be started, the trash is deleted here."""
        trash, self._trash = self._trash or [], None
        if not trash:
            return
        from builder.plumbing.detached import delete_later

        try:
            delete_later([t.path for t in trash], hold=[root_lock, *(t.fd for t in trash)])
        except OSError:
            for t in trash:
                t.close()
            return
        for t in trash:
            t.unlock()

    def _discard_later(self, scratch: Scratch) -> None:
        """SCRATCH, a step's scratch dir it is done with: made trash (see the module's note) when
        deferring and its upper dir was not committed; else deleted now (only the small work dir
        is left, or a naive diff whose hard links must not outlive the step)."""
        temp = scratch._temp
        if self._trash is not None and temp in self._trash:
            return  # closed twice
        if self._trash is not None and temp.fd is not None and os.path.isdir(scratch.upperdir):
            path = os.path.join(self._tmp, "trash-" + os.path.basename(temp.path).partition("-")[2])
            try:
                os.rename(temp.path, path)  # gone at once; the flock is on the dir, not the name
            except OSError:
                pass
            else:
                temp.path = path
                self._trash.append(temp)
                return
        temp.close()

    def commit(self, scratch: Scratch, chain_id: str) -> str:
        """Make SCRATCH's upper dir the snapshot for CHAIN_ID (a rename: an upper dir is already
        a valid lower dir). If another process committed it first, theirs is kept."""
        return self.commit_dir(scratch.upperdir, chain_id)

    def commit_dir(self, directory: str, chain_id: str) -> str:
        """Make DIRECTORY (inside one of this store's work dirs) the snapshot for CHAIN_ID by a
        rename. If another process committed it first, theirs is kept."""
        dest = self.path(chain_id)
        with self._locked(chain_id):
            if not os.path.isdir(dest):
                os.rename(directory, dest)
        return dest

    def keys(self) -> list[str]:
        """Every committed snapshot's directory name."""
        return sorted(n for n in os.listdir(self._snapshots) if os.path.isdir(os.path.join(self._snapshots, n)))

    def entries(self) -> list[str]:
        return sorted(os.listdir(self._snapshots))

    @property
    def directory(self) -> str:
        return self._snapshots

    def remove(self, chain_id: str) -> None:
        dest = self.path(chain_id)
        with self._locked(chain_id):
            if os.path.isdir(dest):
                with _TempDir(self._tmp, "remove-") as tmp:
                    os.rename(dest, os.path.join(tmp.path, "fs"))  # gone at once, deleted after

    def clean_stale(self) -> None:
        """Delete work dirs whose owner died (nobody holds their flock any more)."""
        for name in os.listdir(self._tmp):
            path = os.path.join(self._tmp, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # its owner is alive
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(fd)

    # -- helpers ---------------------------------------------------------------------------

    def _locked(self, chain_id: str) -> contextlib.AbstractContextManager[None]:
        return locked(os.path.join(self._locks, _key(chain_id)))
