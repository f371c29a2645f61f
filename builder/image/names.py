"""The local image store's index: image names (name:tag, name@digest) -> manifest digests.

The images themselves are blobs in the caller's BlobStore; this module only keeps names. The index is one
JSON file, ROOT/images/index.json, replaced atomically (temp file, fsync, rename, fsync of the directory), so readers never lock
and never see a half-written index. Writers take an exclusive `flock` on ROOT/images/lock around their
read-modify-write, so several build-image processes can tag into one root without losing each other's
names. Names are plain strings here; normalising references is the caller's business.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Callable

from builder.errors import StoreError
from builder.plumbing.canonical import canonical_json
from builder.plumbing.files import locked, write_atomically

_INDEX_VERSION = 1


class ImageStore:
    def __init__(self, root: str):
        self.root = root
        self.images_dir = os.path.join(root, "images")
        self.index_path = os.path.join(self.images_dir, "index.json")
        self._lock_path = os.path.join(self.images_dir, "lock")
        os.makedirs(self.images_dir, exist_ok=True)

    def tag(self, name: str, manifest_digest: str) -> None:
        _check_name(name)
        _check_digest(manifest_digest)
        self._update(lambda names: names.__setitem__(name, manifest_digest))

    def untag(self, name: str) -> str | None:
        """Remove NAME; return the digest it pointed at, or None if it was not there."""
        removed: list[str | None] = []
        self._update(lambda names: removed.append(names.pop(name, None)))
        return removed[0]

    def resolve(self, name: str) -> str | None:
        return self._read().get(name)

    def list(self) -> list[tuple[str, str]]:
        return sorted(self._read().items())

    def names_for(self, manifest_digest: str) -> list[str]:
        return sorted(name for name, digest in self._read().items() if digest == manifest_digest)

    # --- the index file ---

    def _read(self) -> dict[str, str]:
        try:
            with open(self.index_path, "rb") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise StoreError(f"image index {self.index_path} is corrupt ({e}); remove it to start over") from None
        if not isinstance(doc, dict) or doc.get("version") != _INDEX_VERSION or not isinstance(doc.get("images"), dict):
            raise StoreError(f"image index {self.index_path} has an unknown format (want version {_INDEX_VERSION})")
        return dict(doc["images"])

    def _update(self, change: Callable[[dict[str, str]], None]) -> None:
        with self._locked():
            names = self._read()
            before = dict(names)
            change(names)
            if names != before:
                self._write(names)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self._lock_path, 0o644)

    def _write(self, names: dict[str, str]) -> None:
        write_atomically(self.index_path, canonical_json({"version": _INDEX_VERSION, "images": names}))


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name):
        raise StoreError(f"invalid image name {name!r}")


def _check_digest(digest: str) -> None:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise StoreError(f"not a sha256 manifest digest: {digest!r}")
