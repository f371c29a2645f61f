"""An OCI image layout directory (image-spec: `oci-layout`, `index.json`, `blobs/ALG/HEX`) read as
an image source, the way `--build-context NAME=oci-layout://PATH[:TAG][@DIGEST]` names one.

Nothing in a layout is trusted: a blob is found only by a digest of the right shape (so an index
cannot point outside `blobs/`), JSON is read with a size cap, and every blob is verified against
its digest, the manifests and configs as they are read and the layers by the blob store that
they are copied into.
"""

from __future__ import annotations

import json
import os
import re

from builder.errors import SourceNotFound
from builder.image import LAYOUT_SCHEME
from builder.image.media import INDEX_TYPES, MANIFEST_TYPES, Descriptor
from builder.plumbing.canonical import json_object
from builder.plumbing.records import dataclass

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_JSON = 4 << 20          # an index or manifest larger than this is not one
_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class LayoutRef:
    path: str
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        return LAYOUT_SCHEME + self.path + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_layout_ref(text: str) -> LayoutRef:
    """`oci-layout://PATH[:TAG][@DIGEST]`; a PATH that exists as written wins, so it may hold colons."""
    rest = text.removeprefix(LAYOUT_SCHEME)
    path, at, digest = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if at and not _DIGEST.fullmatch(digest):
        raise SourceNotFound(f"{text}: {digest!r} is not a sha256 digest")
    tag = ""
    if not os.path.isdir(path):
        head, colon, tail = path.rpartition(":")
        if colon and "/" not in tail:
            path, tag = head, tail
    if not path:
        raise SourceNotFound(f"{text}: no layout path")
    return LayoutRef(os.path.abspath(path), tag, digest)


class ImageLayout:
    def __init__(self, ref: LayoutRef):
        self.ref = ref
        self.path = ref.path
        try:
            with open(os.path.join(self.path, "oci-layout"), "rb") as f:
                marker = json.loads(f.read(_MAX_JSON))
            with open(os.path.join(self.path, "index.json"), "rb") as f:
                self.index = json.loads(f.read(_MAX_JSON))
        except FileNotFoundError:
            raise SourceNotFound(f"{ref}: not an OCI image layout (no oci-layout or index.json)") from None
        except (OSError, ValueError) as error:
            raise SourceNotFound(f"{ref}: unreadable OCI image layout: {error}") from None
        if not isinstance(marker, dict) or "imageLayoutVersion" not in marker or not isinstance(self.index, dict):
            raise SourceNotFound(f"{ref}: not an OCI image layout")

    def blob_path(self, digest: str) -> str:
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise SourceNotFound(f"{self.ref}: bad blob digest {digest!r}")
        return os.path.join(self.path, "blobs", "sha256", digest.partition(":")[2])

    def read_document(self, desc: Descriptor) -> bytes:
        """A manifest's or config's bytes, verified against DESC's digest and size."""
        import hashlib

        try:
            with open(self.blob_path(desc.digest), "rb") as f:
                data = f.read(_MAX_JSON + 1)
        except FileNotFoundError:
            raise SourceNotFound(f"{self.ref}: blob {desc.digest} is missing") from None
        except OSError as error:
            raise SourceNotFound(f"{self.ref}: blob {desc.digest}: {error.strerror or error}") from None
        if len(data) > _MAX_JSON or "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest \
                or (desc.size and len(data) != desc.size):
            raise SourceNotFound(f"{self.ref}: blob {desc.digest} does not match its digest")
        return data

    def image_manifest(self, platform_matches) -> tuple[Descriptor, bytes]:
        """The image manifest the reference names: by digest, else by tag (`latest` when none is
        given; a layout holding one image needs no tag); an index resolves to the entry for the
        platform that PLATFORM_MATCHES(os, architecture, variant) accepts."""
        desc = self._entry()
        data = self.read_document(desc)
        for _ in range(4):   # an index may name an index; not endlessly
            if desc.media_type not in INDEX_TYPES and _json(data, self.ref).get("mediaType") not in INDEX_TYPES:
                break
            desc = self._platform_entry(_json(data, self.ref), platform_matches)
            data = self.read_document(desc)
        if desc.media_type not in MANIFEST_TYPES and _json(data, self.ref).get("mediaType") not in MANIFEST_TYPES:
            raise SourceNotFound(f"{self.ref}: {desc.digest} is not an image manifest")
        return desc, data

    def _entries(self) -> list[Descriptor]:
        entries = []
        for entry in self.index.get("manifests") or ():
            try:
                entries.append(Descriptor.from_json(entry))
            except (KeyError, TypeError, ValueError):
                raise SourceNotFound(f"{self.ref}: index.json has a bad entry") from None
        return entries

    def _entry(self) -> Descriptor:
        entries = self._entries()
        ref = self.ref
        if ref.digest:
            found = [d for d in entries if d.digest == ref.digest]
            if found:
                return found[0]
            return Descriptor("", ref.digest, 0)   # not in the index: its own mediaType says what it is
        tag = ref.tag or "latest"
        named = [d for d in entries if _ref_name(d) == tag or _ref_name(d).endswith(":" + tag)]
        if named:
            return named[0]
        if not ref.tag and len(entries) == 1:
            return entries[0]
        raise SourceNotFound(f"{ref}: no image tagged {tag!r} in the layout")

    def _platform_entry(self, index: dict, platform_matches) -> Descriptor:
        for entry in index.get("manifests") or ():
            platform = entry.get("platform") or {}
            if platform_matches(platform.get("os", ""), platform.get("architecture", ""), platform.get("variant", "")):
                return Descriptor.from_json(entry)
        raise SourceNotFound(f"{self.ref}: no image for this platform in the layout's index")


def _json(data: bytes, ref) -> dict:
    try:
        return json_object(data)
    except ValueError as error:
        raise SourceNotFound(f"{ref}: a manifest is {error}") from None


def _ref_name(desc: Descriptor) -> str:
    return dict(desc.annotations).get(_REF_NAME, "")
