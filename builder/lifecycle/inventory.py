"""What images the store holds, and finding one by name or ID as docker does.

An image is a manifest blob. It is *named* when the image index maps at least one name to it
(`registry/repo:tag` is a tag, `registry/repo@sha256:...` a repo digest) and *dangling* when no
name does: a build without `-t`, the old image after its tag moved to a new build, a base image
pulled during a build. Dangling images are found by scanning the blob store for image manifests.
"""

from __future__ import annotations

import datetime
import json
import re

from builder.errors import BlobNotFound, ImageNotFound, StoreError
from builder.image import media
from builder.image.manifest import StoredImage, read_image
from builder.plumbing.records import dataclass
from builder.registry.reference import InvalidReference, Reference, parse_reference
from builder.store import Store

_MAX_MANIFEST = 4 << 20
_ID_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")


@dataclass(frozen=True)
class ImageRecord:
    """One image in the store and the names that point at it (normalised, sorted)."""

    image: StoredImage
    tags: tuple[str, ...]           # "docker.io/library/app:latest"
    digests: tuple[str, ...]        # "docker.io/library/app@sha256:..."

    @property
    def image_id(self) -> str:
        return self.image.image_id

    @property
    def manifest_digest(self) -> str:
        return self.image.manifest.digest

    @property
    def names(self) -> tuple[str, ...]:
        return self.tags + self.digests

    @property
    def dangling(self) -> bool:
        return not self.names

    @property
    def created(self) -> datetime.datetime | None:
        return parse_time(self.image.config.created)

    @property
    def repo_tags(self) -> tuple[str, ...]:
        """The tags as docker shows them: `app:latest`, `127.0.0.1:5000/app:1`."""
        return tuple(familiar(name) for name in self.tags)

    @property
    def repo_digests(self) -> tuple[str, ...]:
        return tuple(familiar(name) for name in self.digests)


def familiar(name: str) -> str:
    """A stored name the way docker prints it (`docker.io/library/app:1` -> `app:1`)."""
    try:
        return parse_reference(name).familiar
    except InvalidReference:
        return name


def parse_time(text: str | None) -> datetime.datetime | None:
    """An RFC 3339 time from a config (nanoseconds and offsets allowed), in UTC; None if unreadable."""
    if not text:
        return None
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if not m:
        return None
    fraction = (m.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        parsed = datetime.datetime.fromisoformat(f"{m.group(1)}.{fraction}{zone}")
    except ValueError:
        return None
    return parsed.astimezone(datetime.timezone.utc)


def list_images(store: Store, *, include_dangling: bool = True) -> list[ImageRecord]:
    """Every image, newest first (as `docker images` sorts), named ones from the index, dangling
    ones from the blob store. A name whose manifest is missing or unreadable is skipped (fsck
    reports it)."""
    by_digest: dict[str, list[str]] = {}
    for name, digest in store.images.list():
        by_digest.setdefault(digest, []).append(name)
    records = []
    for digest, names in by_digest.items():
        image = _read_or_none(store, digest)
        if image is not None:
            records.append(_record(image, names))
    if include_dangling:
        for digest in image_manifest_digests(store):
            if digest not in by_digest:
                image = _read_or_none(store, digest)
                if image is not None:
                    records.append(ImageRecord(image, (), ()))
    oldest = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    records.sort(key=lambda r: (r.created or oldest, r.manifest_digest), reverse=True)
    return records


def image_manifest_digests(store: Store) -> list[str]:
    """Digests of every blob that is an OCI or Docker image manifest; in a namespace, only those
    its index owns (another user's images are not even dangling ones here)."""
    found = []
    candidates = store.images.owned() if store.namespace is not None else store.blobs.digests()
    built_layers = set(store.blobs.backed_digests())  # layers made from snapshots: never manifests
    for digest in candidates:
        if digest in built_layers:
            continue
        if _manifest_document(store, digest) is not None:
            found.append(digest)
    return found


def _manifest_document(store: Store, digest: str) -> dict | None:
    try:
        if store.blobs.size(digest) > _MAX_MANIFEST:
            return None
        with store.blobs.open(digest) as f:
            if f.read(1) != b"{":  # layers are gzip, zstd or tar: never JSON objects
                return None
            f.seek(0)
            doc = json.loads(f.read())
    except (StoreError, OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        return None
    media_type = doc.get("mediaType")
    if media_type in media.MANIFEST_TYPES or (media_type is None and "config" in doc and "layers" in doc):
        return doc
    return None


def record_for(store: Store, manifest_digest: str) -> ImageRecord:
    return _record(read_image(store.blobs, manifest_digest), store.images.names_for(manifest_digest))


def _record(image: StoredImage, names: list[str]) -> ImageRecord:
    tags = tuple(sorted(n for n in names if "@" not in n))
    digests = tuple(sorted(n for n in names if "@" in n))
    return ImageRecord(image, tags, digests)


def _read_or_none(store: Store, digest: str) -> StoredImage | None:
    try:
        return read_image(store.blobs, digest)
    except StoreError:
        return None


def find_image(store: Store, name: str) -> ImageRecord:
    """The image NAME means: a name (`app`, `app:1`, `app@sha256:...`), else an image ID or a
    unique prefix of one (`3f5a`, `sha256:3f5a...`), as docker looks them up."""
    ref = _reference_or_none(name)
    if ref is not None:
        digest = store.images.resolve(str(ref))
        if digest is not None:
            try:
                return record_for(store, digest)
            except BlobNotFound:
                raise ImageNotFound(f"image {name} is in the index but its manifest {digest} is missing "
                                    "from the store (run build-image fsck)") from None
    m = _ID_PREFIX.fullmatch(name)
    if m:
        found = [r for r in list_images(store) if r.image_id.partition(":")[2].startswith(m.group(1))]
        unique = {r.image_id for r in found}
        if len(unique) > 1:
            raise ImageNotFound(f"multiple IDs found with provided prefix: {name}")
        if found:
            named = [r for r in found if not r.dangling]
            return _merge(named or found)
    shown = ref.familiar if ref is not None else name
    raise ImageNotFound(f"No such image: {shown}")


def _merge(records: list[ImageRecord]) -> ImageRecord:
    """One config (ID) can be shared by several manifests (the same image as OCI and Docker
    manifests); the newest-listed one stands for the ID, with every name of every manifest."""
    first = records[0]
    tags = tuple(sorted({t for r in records for t in r.tags}))
    digests = tuple(sorted({d for r in records for d in r.digests}))
    return ImageRecord(first.image, tags, digests)


def _reference_or_none(name: str) -> Reference | None:
    try:
        return parse_reference(name)
    except InvalidReference:
        return None


def repository_tags(store: Store, ref: Reference) -> list[str]:
    """Every tag name stored for REF's repository (what `docker save app` means by `app`)."""
    prefix = ref.name + ":"
    return [name for name, _ in store.images.list() if name.startswith(prefix) and "@" not in name]
