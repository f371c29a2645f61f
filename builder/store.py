"""The local store: everything build-image keeps, under one root directory.

    ROOT/blobs/sha256/<hex>       content-addressed blobs: layers, configs, manifests
    ROOT/blobs/tmp/               blob writes in progress (atomic rename into sha256/)
    ROOT/snapshots/               unpacked layers by chain ID, used as overlay lower dirs
    ROOT/images/                  the image index: name:tag and name@digest -> manifest digest
    ROOT/cache/records/<key>.json build cache: cache key -> layer it produced
    ROOT/lock                     held shared by every process using the root, exclusively by GC
"""

from __future__ import annotations

import fcntl
import os

from builder.cache.blobs import BlobStore
from builder.cache.records import CacheRecords


def default_root() -> str:
    explicit = os.environ.get("BUILD_IMAGE_ROOT")
    if explicit:
        return explicit
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data_home, "build-image")


class Store:
    def __init__(self, root: str | None = None):
        from builder.image.store import ImageStore
        from builder.snapshot.store import SnapshotStore

        self.root = os.path.abspath(root or default_root())
        os.makedirs(self.root, exist_ok=True)
        self.blobs = BlobStore(os.path.join(self.root, "blobs"))
        self.snapshots = SnapshotStore(self.root)
        self.images = ImageStore(self.root)
        self.records = CacheRecords(os.path.join(self.root, "cache", "records"))
        self._lock_file = None

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
            if shared:
                fcntl.flock(self._lock_file, fcntl.LOCK_SH)
        except BlockingIOError:
            if not shared:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            else:
                fcntl.flock(self._lock_file, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
