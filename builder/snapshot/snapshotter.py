"""Snapshotters: copy-on-write filesystems for build steps, after containerd's `snapshots.Snapshotter`.

    Snapshotter              the interface the solver, the executor and RUN mounts use
      lowerdirs(chain)       the committed snapshots of a chain of layers (made from their blobs if
                             missing): what a step's parent is, read-only
      prepare(parent)        an active snapshot over PARENT: its mount (read-write) and, when the
                             step is done, its change as an overlay upper dir (`diff_dir`)
      commit(active, chain)  the active snapshot becomes the committed one for the chain ID
      view(parent)           a read-only mount of PARENT
      writable(parent)       a throwaway read-write mount of PARENT (RUN --mount=type=bind,rw)
      remove(chain), usage(chain)
    OverlaySnapshotter       the default: a committed snapshot is one layer's upper dir, a stack of
                             them is mounted as an overlay; commit renames the upper dir in place
    NaiveSnapshotter         no overlayfs: a committed snapshot is a whole root filesystem; prepare
                             copies the parent (cp -a, reflinks where the filesystem has them) and
                             the change is found by comparing the two trees (containerd's "native")

A `SnapshotMount` says how to mount a snapshot, and `attach`/`detached` are the only code that
turns one into a kernel mount (overlay through the new mount API, or a bind): they take no
Python-level lock, so a child forked from a threaded process may call them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from builder.errors import StoreError
from builder.plumbing.linux import clone_tree, move_mount
from builder.plumbing.records import dataclass
from builder.snapshot import SNAPSHOTTER_KINDS
from builder.snapshot.overlay import overlay_mount_fd
from builder.snapshot.snapshots import Scratch, SnapshotStore, store_name

OVERLAY, BIND = "overlay", "bind"


@dataclass(frozen=True)
class SnapshotMount:
    """How to mount a snapshot (the executor's RootFS).

    overlay: LOWERDIRS (base first; none: an empty root) with writes going to UPPERDIR (WORKDIR on
             its filesystem), or read-only without an UPPERDIR.
    bind:    one whole tree: UPPERDIR read-write, or LOWERDIRS[0] read-only.
    """

    lowerdirs: tuple[str, ...]
    upperdir: str | None = None
    workdir: str | None = None
    kind: str = OVERLAY

    def detached(self, empty_dir: str) -> int:
        """A detached mount of this snapshot (an fd for move_mount). EMPTY_DIR is an empty
        directory the caller owns: the lower dir of an empty root."""
        if self.kind == BIND:
            source = self.upperdir if self.upperdir is not None else (self.lowerdirs or (empty_dir,))[0]
            return clone_tree(source, readonly=self.upperdir is None)
        lowers = self.lowerdirs or (empty_dir,)
        if self.upperdir is None and len(lowers) == 1:
            # A read-only overlay needs two lower dirs. Not a bind: a bind shows its host path in
            # the container's /proc/self/mountinfo.
            lowers = (empty_dir, *lowers)
        return overlay_mount_fd(lowers, self.upperdir, self.workdir if self.upperdir is not None else None)

    def attach(self, target: str, empty_dir: str) -> None:
        """Mount this snapshot at TARGET (inside a private mount namespace)."""
        fd = self.detached(empty_dir)
        try:
            move_mount(fd, target)
        finally:
            os.close(fd)


class Active:
    """A prepared snapshot: MOUNT is where the step writes; `diff_dir` is the change."""

    def __init__(self, mount: SnapshotMount, scratch: Scratch, parent: tuple[str, ...],
                 diff: Callable[["Active"], str]):
        self.mount = mount
        self.parent = parent
        self.scratch = scratch
        self._diff = diff
        self._diff_dir: str | None = None

    def diff_dir(self) -> str:
        """The change against the parent as an overlay upper dir (deletions are char devices 0:0):
        what `write_layer` archives."""
        if self._diff_dir is None:
            self._diff_dir = self._diff(self)
        return self._diff_dir

    def close(self) -> None:
        self.scratch.close()

    def __enter__(self) -> "Active":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Snapshotter(ABC):
    """Committed snapshots are keyed by chain ID in STORE (a SnapshotStore: locks, crash-safe
    renames, stale work dirs cleaned)."""

    name: str
    # True when a committed snapshot is its layer's change as it stays: the layer's tar can be
    # made from it again at any time (builder/snapshot/backed.py), so none need be stored.
    commits_layer_content: bool = False

    def __init__(self, store: SnapshotStore):
        self.store = store

    @abstractmethod
    def lowerdirs(self, chain: Sequence[tuple[str, Callable[[], BinaryIO]]]) -> tuple[str, ...]:
        """The committed snapshots for CHAIN, (chain ID, open the layer blob) base first, made
        from the blobs where missing: a parent for `prepare`, `view` and `writable`."""

    @abstractmethod
    def prepare(self, parent: tuple[str, ...]) -> Active: ...

    @abstractmethod
    def view(self, parent: tuple[str, ...]) -> SnapshotMount: ...

    @abstractmethod
    def writable(self, parent: tuple[str, ...]) -> contextlib.AbstractContextManager[SnapshotMount]: ...

    @abstractmethod
    def _committed_dir(self, active: Active) -> str:
        """The directory of ACTIVE that becomes the committed snapshot."""

    def commit(self, active: Active, chain_id: str) -> str:
        """ACTIVE becomes the snapshot of CHAIN_ID by one rename (if another process committed
        it first, theirs is kept). A kill before the rename leaves only a work dir."""
        return self.store.commit_dir(self._committed_dir(active), chain_id)

    def remove(self, chain_id: str) -> None:
        self.store.remove(chain_id)

    def change_dir(self, chain_id: str) -> str | None:
        """The committed snapshot of CHAIN_ID as its layer's change (files the step wrote, never
        written again), if this snapshotter keeps it so and it is there; else None."""
        if not self.commits_layer_content or not self.store.has(chain_id):
            return None
        return self.store.path(chain_id)

    def usage(self, chain_id: str) -> int:
        """Bytes the snapshot of CHAIN_ID takes on disk (0 if there is none)."""
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.store.path(chain_id)):
            for name in dirnames + filenames:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
        return total

    def scratch(self) -> Scratch:
        """A throwaway work directory pair in the store (not a snapshot)."""
        return self.store.scratch()


class OverlaySnapshotter(Snapshotter):
    name = "overlay"
    commits_layer_content = True  # a committed snapshot is the layer's change, kept as it was

    def lowerdirs(self, chain):
        return tuple(self.store.ensure(chain_id, open_layer) for chain_id, open_layer in chain)

    def prepare(self, parent):
        scratch = self.store.scratch(discard_later=True)
        mount = SnapshotMount(tuple(parent), scratch.upperdir, scratch.workdir)
        return Active(mount, scratch, tuple(parent), lambda active: active.scratch.upperdir)

    def view(self, parent):
        return SnapshotMount(tuple(parent))

    @contextlib.contextmanager
    def writable(self, parent):
        with self.store.scratch(discard_later=True) as scratch:  # the writes are thrown away with it
            yield SnapshotMount(tuple(parent), scratch.upperdir, scratch.workdir)

    def _committed_dir(self, active):
        return active.scratch.upperdir  # an upper dir is already a valid lower dir


class NaiveSnapshotter(Snapshotter):
    """Whole trees, no overlayfs: every committed snapshot is the full root filesystem of its chain."""

    name = "naive"
    commits_layer_content = False  # a committed snapshot is a whole tree, not the change

    def lowerdirs(self, chain):
        tree: str | None = None
        for chain_id, open_layer in chain:
            tree = self.store.ensure_with(chain_id, lambda dest, below=tree, o=open_layer: _flatten(below, o, dest))
        return (tree,) if tree is not None else ()

    def prepare(self, parent):
        scratch = self.store.scratch(discard_later=True)
        try:
            tree = scratch.upperdir
            if parent:
                _copy_tree(_one(parent), tree)
        except BaseException:
            scratch.close()
            raise
        return Active(SnapshotMount((), tree, None, BIND), scratch, tuple(parent), _naive_diff)

    def view(self, parent):
        return SnapshotMount(tuple(parent)[-1:], None, None, BIND)

    @contextlib.contextmanager
    def writable(self, parent):
        with self.store.scratch(discard_later=True) as scratch:
            if parent:
                _copy_tree(_one(parent), scratch.upperdir)
            yield SnapshotMount((), scratch.upperdir, None, BIND)

    def _committed_dir(self, active):
        return active.scratch.upperdir  # the whole tree the step wrote in


def make_snapshotter(kind: str, root: str) -> Snapshotter:
    """The snapshotter KIND ("overlay" or "naive") over the store ROOT. Each keeps its snapshots
    in its own directory: an overlay snapshot is one layer, a naive one a whole tree."""
    if kind == "overlay":
        return OverlaySnapshotter(SnapshotStore(root, store_name(kind)))
    if kind == "naive":
        return NaiveSnapshotter(SnapshotStore(root, store_name(kind)))
    raise StoreError(f"unknown snapshotter {kind!r}; use {' or '.join(SNAPSHOTTER_KINDS)}")


# ---- the naive snapshotter's trees and diffs ---------------------------------------------------


def _one(parent: Sequence[str]) -> str:
    if len(parent) != 1:
        raise StoreError(f"a naive snapshot's parent is one tree, not {len(parent)}")
    return parent[0]


def _copy_tree(source: str, dest: str) -> None:
    """SOURCE's contents into the existing DEST, with owners, modes, times, xattrs and hard links."""
    result = subprocess.run(["cp", "-a", "--reflink=auto", "--", source + "/.", dest],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise StoreError(f"copying snapshot {source}: {result.stderr.strip()}")
    st = os.lstat(source)
    os.chmod(dest, stat.S_IMODE(st.st_mode))


def _flatten(below: str | None, open_layer: Callable[[], BinaryIO], dest: str) -> None:
    """DEST (empty): the tree BELOW with the layer applied on top (whiteouts delete)."""
    from builder.snapshot.layers import apply_layer

    if below is not None:
        _copy_tree(below, dest)
    with open_layer() as stream:
        apply_layer(stream, dest)


def _naive_diff(active: Active) -> str:
    """The change from the parent tree to the active one, as an overlay upper dir beside them:
    new and changed entries hard-linked (directories made with their metadata), deleted ones as
    char devices 0:0. Unchanged is what `cp -a` copied: same type, owner, mode, size, mtime,
    link count, link target, device and kept xattrs (containerd's naive differ compares about the same)."""
    new = active.mount.upperdir
    diff = os.path.join(os.path.dirname(new), "diff")
    os.mkdir(diff)
    old = active.parent[0] if active.parent else None
    _diff_dir(old, new, diff, "")
    return diff


def _diff_dir(old: str | None, new: str, out: str, rel: str) -> bool:
    """Write the changes under REL into OUT; True if there were any (OUT/REL made as needed)."""
    new_dir = os.path.join(new, rel) if rel else new
    old_dir = (os.path.join(old, rel) if rel else old) if old is not None else None
    names = sorted(os.listdir(new_dir), key=os.fsencode)
    old_names = set(os.listdir(old_dir)) if old_dir is not None and os.path.isdir(old_dir) and \
        not os.path.islink(old_dir) else set()
    changed = False
    for name in names:
        child = f"{rel}/{name}" if rel else name
        st = os.lstat(os.path.join(new, child))
        old_st = _lstat(os.path.join(old, child)) if name in old_names else None
        if stat.S_ISDIR(st.st_mode):
            same_type = old_st is not None and stat.S_ISDIR(old_st.st_mode)
            inner = _diff_dir(old if same_type else None, new, out, child)
            if inner or not same_type or not _same_meta(st, old_st, os.path.join(new, child), os.path.join(old, child)):
                _ensure_dir(new, out, child)
                changed = True
        elif old_st is None or not _same_entry(st, old_st, os.path.join(new, child), os.path.join(old, child)):
            _ensure_parents(new, out, rel)
            os.link(os.path.join(new, child), os.path.join(out, child), follow_symlinks=False)
            changed = True
    for name in sorted(old_names - set(names)):
        _ensure_parents(new, out, rel)
        os.mknod(os.path.join(out, rel, name), stat.S_IFCHR | 0o600, 0)  # an overlay whiteout
        changed = True
    if changed and rel:
        _ensure_dir(new, out, rel)
    return changed


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _kept_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names
            if n.startswith(("user.", "security.")) and not n.startswith("user.overlay.")}


def _same_meta(st: os.stat_result, old: os.stat_result | None, path: str, old_path: str) -> bool:
    return (old is not None and stat.S_IFMT(st.st_mode) == stat.S_IFMT(old.st_mode)
            and st.st_mode == old.st_mode and st.st_uid == old.st_uid and st.st_gid == old.st_gid
            and st.st_mtime_ns == old.st_mtime_ns and _kept_xattrs(path) == _kept_xattrs(old_path))


def _same_entry(st: os.stat_result, old: os.stat_result, path: str, old_path: str) -> bool:
    # A new hard link changes the link count of the file it links: both go in the layer, as
    # overlayfs copies the file up to link it.
    if (not _same_meta(st, old, path, old_path) or st.st_size != old.st_size or st.st_rdev != old.st_rdev
            or st.st_nlink != old.st_nlink):
        return False
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(path) == os.readlink(old_path)
    return True


def _ensure_parents(new: str, out: str, rel: str) -> None:
    if rel and not os.path.isdir(os.path.join(out, rel)):
        parent = rel.rpartition("/")[0]
        _ensure_parents(new, out, parent)
        _ensure_dir(new, out, rel)


def _ensure_dir(new: str, out: str, rel: str) -> None:
    """OUT/REL as a directory with NEW/REL's owner, mode, mtime and kept xattrs (set again after
    its children are written, since writing them moves the mtime)."""
    path, source = os.path.join(out, rel), os.path.join(new, rel)
    st = os.lstat(source)
    if not os.path.isdir(path):
        os.mkdir(path, 0o700)
    os.chown(path, st.st_uid, st.st_gid)
    os.chmod(path, stat.S_IMODE(st.st_mode))
    for name, value in _kept_xattrs(source).items():
        os.setxattr(path, name, value)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
