"""The local store: everything build-image keeps, under one root directory.

    ROOT/blobs/sha256/<hex>       content-addressed blobs: layers, configs, manifests
    ROOT/blobs/tmp/               blob writes in progress (atomic rename into sha256/)
    ROOT/snapshots/               unpacked layers by chain ID, used as overlay lower dirs
    ROOT/snapshots.naive/         whole trees by chain ID (BUILD_IMAGE_SNAPSHOTTER=naive, no overlayfs)
    ROOT/layers/<hex>.json        built layers with no stored tar: diff_id -> the snapshot it is made from
    ROOT/images/                  the image index: name:tag and name@digest -> manifest digest
    ROOT/cache/records/<key>.json build cache: cache key -> layer it produced
    ROOT/cache/compressed/        compressed variants of layers, made when an output needs them
    ROOT/run/                     per-step scratch (container roots, mount points), gone after the step
    ROOT/namespaces/<name>/       one user's image names (images/) and RUN cache mounts, for a store
                                  shared through `build-image serve` (blobs and snapshots stay shared)
    ROOT/lock                     held shared by every process using the root, exclusively by GC
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import stat
import tempfile
from typing import TYPE_CHECKING, Iterator

from builder.cache.blobs import BaseBlobStore, BlobStore
from builder.cache.records import BaseCacheRecords, CacheRecords
from builder.errors import StoreError
from builder.snapshot import SNAPSHOTTER_KINDS

if TYPE_CHECKING:
    from builder.image.names import ImageStore

_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def default_namespace() -> str | None:
    """The image-name namespace this process sees: `build-image serve` sets $BUILD_IMAGE_NAMESPACE
    in the worker that runs one user's request; unset, the root's own names."""
    return os.environ.get("BUILD_IMAGE_NAMESPACE") or None


def default_root() -> str:
    explicit = os.environ.get("BUILD_IMAGE_ROOT")
    if explicit:
        return explicit
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data_home, "build-image")


class Store:
    """BLOBS and RECORDS replace the on-disk blob store and cache records (tests give the memory
    twins); everything else stays under ROOT."""

    def __init__(self, root: str | None = None, *, blobs: BaseBlobStore | None = None,
                 records: BaseCacheRecords | None = None, snapshotter: str | None = None,
                 namespace: str | None = None, isolate_cache: bool | None = None):
        from builder.image.names import ImageStore
        from builder.snapshot.backed import SnapshotBackedBlobs

        self.root = os.path.abspath(root or default_root())
        os.makedirs(self.root, exist_ok=True)
        # Built layers are snapshots, made into tars only when read (builder/snapshot/backed.py).
        self.blobs = SnapshotBackedBlobs(blobs if blobs is not None else BlobStore(os.path.join(self.root, "blobs")),
                                         self.root)
        # overlay (the default) or naive: BUILD_IMAGE_SNAPSHOTTER picks it for every command.
        self._snapshotter_kind = snapshotter or os.environ.get("BUILD_IMAGE_SNAPSHOTTER") or "overlay"
        if self._snapshotter_kind not in SNAPSHOTTER_KINDS:
            raise StoreError(f"unknown snapshotter {self._snapshotter_kind!r}; use {' or '.join(SNAPSHOTTER_KINDS)}")
        self.namespace = namespace if namespace is not None else default_namespace()
        if self.namespace is not None:
            if not _NAMESPACE.fullmatch(self.namespace):
                raise StoreError(f"invalid namespace {self.namespace!r}")
            own_dir = os.path.join(self.root, "namespaces", self.namespace)
            # A namespace's images are the ones it names or once named (its dangling ones).
            self.images = ImageStore(own_dir, track_owned=True)
        else:
            own_dir = self.root
            self.images = ImageStore(self.root)
        self.cache_mounts_dir = os.path.join(own_dir, "cache", "mounts")
        # `serve --isolate-cache`: the namespace's own build cache (records and plans), not the root's.
        if isolate_cache is None:
            isolate_cache = os.environ.get("BUILD_IMAGE_ISOLATE_CACHE") == "1"
        isolated = self.namespace is not None and isolate_cache
        self.cache_root = own_dir if isolated else self.root
        records_dir = os.path.join(self.cache_root, "cache", "records")
        self.records = records if records is not None else CacheRecords(records_dir)
        self.run_dir = os.path.join(self.root, "run")
        os.makedirs(self.run_dir, exist_ok=True)
        self._lock_file = None
        self._shared = False
        self._flusher = None   # the thread of flush_soon's syncfs, if one was started

    # Made on first use: a fully cached rebuild never needs them (nor their modules' import).
    @functools.cached_property
    def snapshotter(self):
        from builder.snapshot.snapshotter import make_snapshotter

        snapshotter = make_snapshotter(self._snapshotter_kind, self.root)
        if self._shared:
            snapshotter.store.defer_deletes()
        return snapshotter

    @functools.cached_property
    def snapshots(self):
        if "snapshotter" in self.__dict__:
            return self.snapshotter.store
        from builder.snapshot.snapshots import SnapshotStore, store_name

        return SnapshotStore(self.root, store_name(self._snapshotter_kind))

    @functools.cached_property
    def variants(self):
        from builder.cache.variants import LayerVariants

        return LayerVariants(os.path.join(self.root, "cache", "compressed"))

    def sync(self) -> None:
        """Make every write so far under the root durable (the cache records are written
        without fsync each; see builder.cache.records)."""
        from builder.plumbing.files import sync_filesystem

        if self._flusher is not None:
            self._flusher.join()
        sync_filesystem(self.root)

    def flush_soon(self) -> None:
        """Start writing what is under the root to disk now, on a thread, so that `sync` later
        finds little left: a step's data flushes while its layer is hashed, not after the build.
        A flush already under way is left to finish (sync flushes what came after it)."""
        import threading

        from builder.plumbing.files import sync_filesystem

        if self._flusher is not None and self._flusher.is_alive():
            return
        self._flusher = threading.Thread(target=sync_filesystem, args=(self.root,), daemon=True,
                                         name="build-image-flush")
        self._flusher.start()

    def __enter__(self) -> "Store":
        self.acquire(shared=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self, shared: bool = True) -> None:
        """Shared while building; exclusive for pruning. The first user after a crash cleans up."""
        self._lock_file = open(os.path.join(self.root, "lock"), "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Nobody else is using the root: temp files left by a killed process can go.
            self.blobs.clean_temp()
            self.snapshots.clean_stale()
            self._clean_run_dir()
            if shared:
                fcntl.flock(self._lock_file, fcntl.LOCK_SH)
        except BlockingIOError:
            if not shared:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            else:
                fcntl.flock(self._lock_file, fcntl.LOCK_SH)
        # While the root is shared, the steps' discarded scratch dirs are deleted after the
        # build, by a deleter that takes over this lock (builder/snapshot/snapshots.py).
        self._shared = shared
        if shared and "snapshotter" in self.__dict__:
            self.snapshotter.store.defer_deletes()

    def _clean_run_dir(self) -> None:
        # Only plain directories: a step's mounts live in its own mount namespace and die with it.
        for name in os.listdir(self.run_dir):
            path = os.path.join(self.run_dir, name)
            if os.path.ismount(path):
                continue
            shutil.rmtree(path, ignore_errors=True)

    def release(self) -> None:
        if self._lock_file is not None:
            if self._shared and "snapshotter" in self.__dict__:
                self.snapshotter.store.hand_off_trash(self._lock_file.fileno())
            self._shared = False
            self._lock_file.close()
            self._lock_file = None

    @contextlib.contextmanager
    def exclusive(self) -> Iterator["Store"]:
        """The root to oneself (waits for running builds): what deleting anything needs."""
        self.acquire(shared=False)
        try:
            yield self
        finally:
            self.release()

    # --- what garbage collection needs: every namespace's names, snapshots by directory name ---

    def image_indexes(self) -> list[tuple[str | None, "ImageStore"]]:
        """(namespace or None, its ImageStore) for the root's own names and every namespace's."""
        from builder.image.names import ImageStore

        found: list[tuple[str | None, ImageStore]] = [(None, ImageStore(self.root))]
        directory = os.path.join(self.root, "namespaces")
        names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        found.extend((name, ImageStore(os.path.join(directory, name), track_owned=True))
                     for name in names if _NAMESPACE.fullmatch(name))
        return found

    def protected_layers(self) -> set[str]:
        """Layer digests of the build cache records other than this store's own (the root's
        shared ones, and every namespace's isolated ones): a prune here must keep them."""
        directories = [os.path.join(self.root, "cache", "records")]
        namespaces = os.path.join(self.root, "namespaces")
        if os.path.isdir(namespaces):
            directories += [os.path.join(namespaces, n, "cache", "records") for n in sorted(os.listdir(namespaces))]
        own = os.path.join(self.cache_root, "cache", "records")
        layers: set[str] = set()
        for directory in directories:
            if directory == own or not os.path.isdir(directory):
                continue
            records = CacheRecords(directory)
            for key in records.keys():
                cached = records.get(key)
                if cached is not None:
                    layers.add(cached.layer_digest)
        return layers

    def protected_manifests(self) -> set[str]:
        """Manifest digests other namespaces (and the root's own index) name or own: a prune in
        this store's namespace must keep them whatever this namespace thinks of them."""
        digests: set[str] = set()
        for namespace, index in self.image_indexes():
            if namespace == self.namespace:
                continue
            digests.update(digest for _, digest in index.list())
            digests.update(index.owned())
        return digests


    def snapshot_key(self, chain_id: str) -> str:
        """The directory name under ROOT/snapshots/ of CHAIN_ID's snapshot."""
        return os.path.basename(self.snapshots.path(chain_id))

    def backing_snapshot_keys(self) -> set[str]:
        """The snapshots the store's built layers are made from (builder/snapshot/backed.py): kept
        while their layers are. Only overlay snapshots back layers (a naive store keeps its tars)."""
        if self._snapshotter_kind != "overlay":
            return set()
        keys = set()
        for digest in self.blobs.backed_digests():
            try:
                source = self.blobs.source(digest)
            except StoreError:
                continue  # unreadable: fsck's business; it names no snapshot
            if source is not None:
                keys.add(self.snapshot_key(source.chain))
        return keys

    def snapshot_keys(self) -> list[str]:
        """Every committed snapshot's directory name (chain IDs are not recoverable from them)."""
        return self.snapshots.keys()

    def snapshot_entries(self) -> list[str]:
        """Every name under ROOT/snapshots/, directories or not (fsck looks for strays)."""
        return self.snapshots.entries()

    def snapshot_size(self, key: str) -> int:
        return tree_size(os.path.join(self.snapshots.directory, key))

    def remove_snapshot(self, key: str) -> None:
        """Delete snapshot KEY; call only with the root held exclusively. It is renamed away first,
        so a crash midway never leaves a half-deleted directory that looks like a snapshot."""
        path = os.path.join(self.snapshots.directory, key)
        if not os.path.lexists(path):
            return
        if not os.path.isdir(path) or os.path.islink(path):
            os.unlink(path)
            return
        trash = tempfile.mkdtemp(prefix="remove-", dir=self.snapshots.directory + ".tmp")
        os.rename(path, os.path.join(trash, "fs"))
        shutil.rmtree(trash, ignore_errors=True)


def tree_size(path: str) -> int:
    """Bytes of file content under PATH as `docker system df` counts them: regular files and
    symlinks by their size, each hard-linked inode once, directories not at all."""
    total, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total
