"""The local image store's index: image names (name:tag, name@digest) -> manifest digests.

The images themselves are blobs in the caller's BlobStore; this module only keeps names. The index is one
JSON file, ROOT/images/index.json, replaced atomically (temp file, fsync, rename, fsync of the directory), so readers never lock
and never see a half-written index. Writers take an exclusive `flock` on ROOT/images/lock around their
read-modify-write, so several build-image processes can tag into one root without losing each other's
names. Names are plain strings here; normalising references is the caller's business.

An index that tracks what it owns (a user's namespace in a store shared by `build-image serve`)
also keeps every manifest digest it ever named or was given with `own()`, so that its user still
sees those images once nothing names them (its dangling images), and nobody else's.
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
    def __init__(self, root: str, track_owned: bool = False):
        self.root = root
        self.track_owned = track_owned
        self.images_dir = os.path.join(root, "images")
        self.index_path = os.path.join(self.images_dir, "index.json")
        self._lock_path = os.path.join(self.images_dir, "lock")
        os.makedirs(self.images_dir, exist_ok=True)

    def tag(self, name: str, manifest_digest: str) -> None:
        _check_name(name)
        _check_digest(manifest_digest)
        self._update(lambda names: names.__setitem__(name, manifest_digest), owned=manifest_digest)

    def own(self, manifest_digest: str) -> None:
        """Record MANIFEST_DIGEST as this index's image even while nothing names it (no-op
        unless the index tracks what it owns)."""
        _check_digest(manifest_digest)
        if self.track_owned:
            self._update(lambda names: None, owned=manifest_digest)

    def owned(self) -> list[str]:
        """Every manifest digest this index names or owns."""
        doc = self._read_doc()
        return sorted(set(doc.get("owned", ())) | set(doc["images"].values()))

    def disown(self, digests) -> None:
        """Forget DIGESTS (a prune deleted those images)."""
        gone = set(digests)
        if self.track_owned and gone:
            self._update(lambda names: None, drop=gone)

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
        return dict(self._read_doc()["images"])

    def _read_doc(self) -> dict:
        try:
            with open(self.index_path, "rb") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {"images": {}}
        except ValueError as e:
            raise StoreError(f"image index {self.index_path} is corrupt ({e}); remove it to start over") from None
        if not isinstance(doc, dict) or doc.get("version") != _INDEX_VERSION or not isinstance(doc.get("images"), dict):
            raise StoreError(f"image index {self.index_path} has an unknown format (want version {_INDEX_VERSION})")
        if not isinstance(doc.get("owned", []), list):
            raise StoreError(f"image index {self.index_path} has an unknown format (owned is no list)")
        return doc

    def _update(self, change: Callable[[dict[str, str]], None], owned: str | None = None,
                drop: set[str] = frozenset()) -> None:
        with self._locked():
            doc = self._read_doc()
            names = dict(doc["images"])
            before = dict(names)
            change(names)
            kept = set(doc.get("owned", ()))
            owns = (kept | ({owned} if owned and self.track_owned else set())) - (drop - set(names.values()))
            if names != before or owns != kept:
                self._write(names, sorted(owns))

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self._lock_path, 0o644)

    def _write(self, names: dict[str, str], owned: list[str]) -> None:
        doc = {"version": _INDEX_VERSION, "images": names, **({"owned": owned} if owned else {})}
        write_atomically(self.index_path, canonical_json(doc))


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name):
        raise StoreError(f"invalid image name {name!r}")


def _check_digest(digest: str) -> None:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise StoreError(f"not a sha256 manifest digest: {digest!r}")
