"""Garbage collection and checks over the whole store: `prune`, `df` and `fsck`.

Everything here is mark and sweep from the roots the store has: the image index's names, the
dangling images a prune keeps, and the build cache records. Blobs no root reaches are garbage;
snapshots are unpacked layers, kept when a kept image's chain of layers uses them, or when a
kept layer is made from them (a built layer has no stored tar: builder/snapshot/backed.py). (A
snapshot dropped while its layer blob stays, as for a cached pulled layer no image uses, is
unpacked again from the blob the next time a build needs it.) Pruning and repairing hold the
root exclusively, so they never run beside a build.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil

from builder.errors import BlobNotFound, StoreError
from builder.image.manifest import read_image
from builder.plumbing.records import dataclass
from builder.store import Store, tree_size

from .inventory import ImageRecord, familiar, image_manifest_digests, list_images, parse_time
from .tagging import short_id

_SNAPSHOT_NAME = re.compile(r"[0-9a-f]{32}")


# --- prune ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneReport:
    untagged: tuple[str, ...]          # familiar names removed
    deleted_images: tuple[str, ...]    # image IDs
    deleted_cache: tuple[str, ...]     # cache keys
    reclaimed: int                     # bytes of blobs, snapshots and records deleted


def prune(store: Store, *, all_images: bool = False, cache: bool = False,
          until: datetime.datetime | None = None) -> PruneReport:
    """Remove dangling images (with ALL_IMAGES: every image, as `docker image prune -a` does when
    no container uses them), with CACHE the build cache records, then every blob and snapshot that
    nothing kept refers to. UNTIL spares what was created at or after that time."""
    with store.exclusive():
        def old_enough(created: datetime.datetime | None) -> bool:
            return until is None or (created is not None and created < until)

        images = list_images(store)
        doomed = [r for r in images if (all_images or r.dangling) and old_enough(r.created)]
        untagged = []
        for record in doomed:
            for name in record.names:
                if store.images.untag(name) is not None:
                    untagged.append(familiar(name))
        reclaimed = 0
        deleted_cache = []
        if cache:
            for key in store.records.keys():
                record = store.records.get(key)
                if record is None or old_enough(parse_time(record.created)):
                    reclaimed += _file_size(os.path.join(store.records.root, key.partition(":")[2] + ".json"))
                    store.records.delete(key)
                    deleted_cache.append(key)
            reclaimed += _prune_build_files(store, old_enough)
        doomed_digests = {r.manifest_digest for r in doomed}
        store.images.disown(doomed_digests)  # a namespace's dangling images go with their blobs
        kept = [r for r in images if r.manifest_digest not in doomed_digests]
        marked = _mark(store, kept)
        for diff_id in store.variants.diff_ids():
            if diff_id not in marked:  # the layer is gone: so is the record of its compressed forms
                store.variants.forget(diff_id)
        for digest in list(store.blobs.digests()):
            if digest not in marked:
                reclaimed += _blob_size(store, digest)
                store.blobs.delete(digest)
        # After the blobs: a layer made from a snapshot (builder/snapshot/backed.py) that is still
        # kept (by an image or a cache record) keeps the snapshot it is made from.
        kept_snapshots = _snapshot_keys_of(store, kept) | store.backing_snapshot_keys()
        for key in store.snapshot_keys():
            if key not in kept_snapshots:
                reclaimed += store.snapshot_size(key)
                store.remove_snapshot(key)
        deleted_ids = tuple(dict.fromkeys(r.image_id for r in doomed))
        return PruneReport(tuple(untagged), deleted_ids, tuple(deleted_cache), reclaimed)


def _prune_build_files(store: Store, old_enough) -> int:
    """Removes the build-cache entries (files or directories) last changed before the cut-off:
    unchanged-rebuild plans, context checksums, COPY runs' records (builder.solver.copyreuse), RUN
    cache mounts (the namespace's own), ADD downloads."""
    reclaimed = 0
    for base in (os.path.join(store.cache_root, "cache", "plans"), os.path.join(store.root, "cache", "context"),
                 os.path.join(store.cache_root, "cache", "copies"),
                 store.cache_mounts_dir, os.path.join(store.root, "http")):
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            continue
        for name in names:
            path = os.path.join(base, name)
            changed = datetime.datetime.fromtimestamp(os.lstat(path).st_mtime, datetime.timezone.utc)
            if not old_enough(changed):
                continue
            reclaimed += tree_size(path)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
    return reclaimed


def _mark(store: Store, kept: list[ImageRecord]) -> set[str]:
    """Every blob reachable from the kept images, the index's names and the cache records."""
    marked: set[str] = set()
    for record in kept:
        marked.add(record.manifest_digest)
        marked.add(record.image.config_descriptor.digest)
        marked.update(layer.digest for layer in record.image.layers)
    for _, digest in store.images.list():
        _mark_document(store, digest, marked)  # also names whose image is unreadable: fsck's business
    for digest in store.protected_manifests():  # other namespaces' images, named or not
        _mark_document(store, digest, marked)
    for key in store.records.keys():
        cached = store.records.get(key)
        if cached is not None:
            marked.add(cached.layer_digest)
    marked.update(store.protected_layers())  # other namespaces' build caches
    # A kept layer keeps its compressed forms: the next export or push need not make them again.
    for diff_id in store.variants.diff_ids():
        if diff_id in marked:
            marked.update(variant.digest for variant in store.variants.of(diff_id))
    return marked


def _mark_document(store: Store, digest: str, marked: set[str], depth: int = 0) -> None:
    """DIGEST and, if it is a readable manifest or index, the blobs it points at."""
    marked.add(digest)
    if depth > 4:
        return
    try:
        doc = json.loads(store.blobs.get_bytes(digest, verify=False))
    except (StoreError, ValueError, OSError):
        return
    if not isinstance(doc, dict):
        return
    for entry in doc.get("manifests") or ():
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            _mark_document(store, entry["digest"], marked, depth + 1)
    for entry in [doc.get("config"), *(doc.get("layers") or ())]:
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            marked.add(entry["digest"])


def _snapshot_keys_of(store: Store, records: list[ImageRecord]) -> set[str]:
    from builder.snapshot.layers import chain_ids

    return {store.snapshot_key(c) for r in records for c in chain_ids(r.image.config.diff_ids)}


def _blob_size(store: Store, digest: str) -> int:
    try:
        return store.blobs.size(digest)
    except (BlobNotFound, StoreError):
        return 0


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# --- df ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    kind: str              # "Images", "Build Cache", "Snapshots"
    total: int
    active: int
    size: int              # bytes on disk
    reclaimable: int       # bytes `prune` (with --cache for the build cache) would free


def disk_usage(store: Store) -> list[UsageRow]:
    """`docker system df` for the store. Images: active means named, reclaimable what pruning the
    dangling ones (and blobs nothing refers to) frees. Build Cache: active means its layer is in
    an image. Snapshots: active means a named image's layers use it."""
    with store:
        images = list_images(store)
        named = [r for r in images if not r.dangling]
        named_blobs = {d for r in named for d in _image_blobs(r)}
        all_image_blobs = {d for r in images for d in _image_blobs(r)}
        cache_blobs = set()
        records = 0
        for key in store.records.keys():
            cached = store.records.get(key)
            records += 1
            if cached is not None:
                cache_blobs.add(cached.layer_digest)
        sizes = {d: _blob_size(store, d) for d in store.blobs.digests()}
        orphans = set(sizes) - all_image_blobs - cache_blobs - _named_documents(store)
        image_size = sum(sizes.get(d, 0) for d in all_image_blobs | orphans)
        image_reclaimable = sum(sizes.get(d, 0) for d in (all_image_blobs - named_blobs - cache_blobs) | orphans)
        cache_size = sum(sizes.get(d, 0) for d in cache_blobs)
        cache_reclaimable = sum(sizes.get(d, 0) for d in cache_blobs - all_image_blobs)
        cache_active = sum(1 for key in store.records.keys()
                           if (r := store.records.get(key)) is not None and r.layer_digest in all_image_blobs)
        active_snapshots = _snapshot_keys_of(store, named)
        snapshot_sizes = {key: store.snapshot_size(key) for key in store.snapshot_keys()}
        return [
            UsageRow("Images", len(images), len(named), image_size, image_reclaimable),
            UsageRow("Build Cache", records, cache_active, cache_size, cache_reclaimable),
            UsageRow("Snapshots", len(snapshot_sizes), sum(1 for k in snapshot_sizes if k in active_snapshots),
                     sum(snapshot_sizes.values()),
                     sum(size for key, size in snapshot_sizes.items() if key not in active_snapshots)),
        ]


def _image_blobs(record: ImageRecord) -> set[str]:
    return {record.manifest_digest, record.image.config_descriptor.digest,
            *(layer.digest for layer in record.image.layers)}


def _named_documents(store: Store) -> set[str]:
    marked: set[str] = set()
    for _, digest in store.images.list():
        _mark_document(store, digest, marked)
    for digest in store.protected_manifests():
        _mark_document(store, digest, marked)
    return marked


# --- fsck -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    subject: str           # what is broken: "blob sha256:...", "image app:latest", "cache record ..."
    message: str
    repaired: bool = False

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}" + (" (removed)" if self.repaired else "")


def fsck(store: Store, *, repair: bool = False) -> list[Problem]:
    """Check every blob against its digest and every reference (names -> manifests -> config and
    layers, cache records -> layers, the snapshot directory); with REPAIR remove what is broken:
    corrupt blobs, names of broken images, broken manifests and records, stray snapshot entries."""
    lock = store.exclusive() if repair else store
    with lock:
        problems: list[Problem] = []
        corrupt = _check_blobs(store, repair, problems)
        corrupt |= _check_backed_layers(store, repair, problems)
        _check_images(store, corrupt, repair, problems)
        _check_records(store, corrupt, repair, problems)
        _check_snapshots(store, repair, problems)
        return problems


def _check_blobs(store: Store, repair: bool, problems: list[Problem]) -> set[str]:
    corrupt = set()
    for name in sorted(os.listdir(store.blobs.blob_dir)):
        digest = "sha256:" + name
        if not re.fullmatch(r"[0-9a-f]{64}", name):
            if repair:
                os.unlink(os.path.join(store.blobs.blob_dir, name))
            problems.append(Problem(f"blob store entry {name}", "not named by a sha256 digest", repair))
            continue
        if not store.blobs.verify(digest):
            corrupt.add(digest)
            if repair:
                store.blobs.delete(digest)
            problems.append(Problem(f"blob {digest}", "content does not match its digest", repair))
    return corrupt


def _check_backed_layers(store: Store, repair: bool, problems: list[Problem]) -> set[str]:
    """Every layer made from a snapshot: its record readable, its snapshot there, and the tar made
    from it hashing to its diff_id. REPAIR forgets a broken one and removes its snapshot, so the
    next build runs the step again and commits it anew."""
    corrupt = set()
    for digest in store.blobs.backed_digests():
        if store.blobs.inner.has(digest):
            continue  # the tar is stored too (a pull or a load of the same layer): checked above
        try:
            source = store.blobs.source(digest)
        except StoreError:
            source, fault = None, "unreadable layer record"
        else:
            if not os.path.isdir(store.blobs.snapshot_dir(source)):
                fault = f"its snapshot {os.path.basename(store.blobs.snapshot_dir(source))} is missing"
            elif not store.blobs.verify(digest):
                fault = "its snapshot no longer makes the layer (content does not match its digest)"
            else:
                continue
        corrupt.add(digest)
        if repair:
            store.blobs.delete(digest)
            if source is not None and store.snapshotter.name == "overlay":
                store.remove_snapshot(store.snapshot_key(source.chain))
        problems.append(Problem(f"layer {digest}", fault, repair))
    return corrupt


def _check_images(store: Store, corrupt: set[str], repair: bool, problems: list[Problem]) -> None:
    indexes = {namespace: index for namespace, index in store.image_indexes()
               if store.namespace is None or namespace == store.namespace}
    by_digest: dict[str, list[str]] = {}
    owners: dict[str, list] = {}
    for namespace, index in indexes.items():
        try:
            names = index.list()
        except StoreError as e:
            problems.append(Problem("image index", str(e)))  # never deleted: it holds every name
            return
        for name, digest in names:
            by_digest.setdefault(digest, []).append(name)
            owners.setdefault(digest, []).append((index, name))
    for digest in image_manifest_digests(store):
        by_digest.setdefault(digest, [])
    for digest, image_names in sorted(by_digest.items()):
        fault = _image_fault(store, digest, corrupt)
        if fault is None:
            continue
        subject = "image " + (", ".join(familiar(n) for n in image_names) if image_names
                              else f"<none> (manifest {digest})")
        if repair:
            for index, name in owners.get(digest, ()):
                index.untag(name)
            store.blobs.delete(digest)
        problems.append(Problem(subject, fault, repair))


def _image_fault(store: Store, digest: str, corrupt: set[str]) -> str | None:
    if digest in corrupt:
        return f"manifest {digest} is corrupt"
    if not store.blobs.has(digest):
        return f"manifest {digest} is missing"
    try:
        image = read_image(store.blobs, digest)
    except StoreError as e:
        return str(e)
    if image.config_descriptor.digest in corrupt:
        return f"config {image.config_descriptor.digest} is corrupt"
    if len(image.config.diff_ids) != len(image.layers):
        return f"config lists {len(image.config.diff_ids)} layers, the manifest {len(image.layers)}"
    for layer in image.layers:
        if layer.digest in corrupt:
            return f"layer {layer.digest} is corrupt"
        if not store.blobs.has(layer.digest):
            return f"layer {layer.digest} is missing"
        if store.blobs.size(layer.digest) != layer.size:
            return f"layer {layer.digest} is {store.blobs.size(layer.digest)} bytes, the manifest says {layer.size}"
    return None


def _check_records(store: Store, corrupt: set[str], repair: bool, problems: list[Problem]) -> None:
    for key in store.records.keys():
        cached = store.records.get(key)
        if cached is None:
            fault = "unreadable record"
        elif cached.layer_digest in corrupt:
            fault = f"layer {cached.layer_digest} is corrupt"
        elif not store.blobs.has(cached.layer_digest):
            fault = f"layer {cached.layer_digest} is missing"
        else:
            continue
        if repair:
            store.records.delete(key)
        problems.append(Problem(f"cache record {short_id(key)}", fault, repair))


def _check_snapshots(store: Store, repair: bool, problems: list[Problem]) -> None:
    directory = store.snapshots.directory
    for name in store.snapshot_entries():
        path = os.path.join(directory, name)
        if _SNAPSHOT_NAME.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path):
            continue
        if repair:
            store.remove_snapshot(name)
        problems.append(Problem(f"snapshot entry {name}", "not a snapshot directory", repair))
