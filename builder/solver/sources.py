"""Base images: where they come from (the local image store or a registry) and their layers.

One `ImageSources` serves a whole build: the converter asks it for configs, the solver for
layers, and every answer is memoised so a base image is resolved once per build.
"""

from __future__ import annotations

import json
import threading

from builder.cache.blobs import BlobStore
from builder.image.config import ImageConfig
from builder.image.media import INDEX_TYPES, Descriptor, Platform
from builder.plumbing.records import dataclass, field


@dataclass(frozen=True)
class BaseImage:
    ref: str                       # normalised name with the manifest digest: repo:tag@sha256:...
    manifest_digest: str
    config: ImageConfig
    layers: tuple[Descriptor, ...]
    local: bool                    # found in the local image store (no registry needed)
    name: str = ""                 # the tag it goes by locally once its layers are all here
    manifest: bytes = field(default=b"", repr=False)  # a pulled one's manifest, stored after its layers


def parse_platform(text: str) -> Platform:
    os_, _, rest = text.partition("/")
    arch, _, variant = rest.partition("/")
    return Platform(os_ or "linux", arch or "amd64", variant)


class ImageSources:
    def __init__(self, blobs: BlobStore, images, client_factory, *, pull: bool = False,
                 progress=None):
        from builder.events import ignore

        self.progress = progress or ignore
        self.blobs = blobs
        self.images = images              # builder.image.names.ImageStore
        self._client_factory = client_factory
        self._client = None
        self.pull_always = pull
        self._resolved: dict[tuple[str, str], BaseImage] = {}
        self._by_ref: dict[str, BaseImage] = {}
        self._lock = threading.Lock()
        self._pulled: set[str] = set()

    @property
    def client(self):
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def close(self) -> None:
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()

    def resolve(self, name: str, platform: str) -> BaseImage:
        with self._lock:
            key = (name, platform)
            if key not in self._resolved:
                from builder import events

                step = f"metadata:{name}:{platform}"
                self.progress(events.Started(step, f"[internal] load metadata for {name}"))
                try:
                    image = self._resolve(name, platform)
                except BaseException as error:
                    self.progress(events.Finished(step, error=str(error) or type(error).__name__))
                    raise
                self.progress(events.Finished(step))
                self._resolved[key] = image
                self._by_ref[image.ref] = image
            return self._resolved[key]

    def resolve_config(self, name: str, platform: str) -> tuple[str, ImageConfig]:
        image = self.resolve(name, platform)
        return image.ref, image.config

    def resolved_digests(self) -> tuple[tuple[str, str, str], ...]:
        """(name, platform, manifest digest) of every base image this build resolved."""
        with self._lock:
            return tuple(sorted((name, platform, image.manifest_digest)
                                for (name, platform), image in self._resolved.items()))

    def by_ref(self, ref: str) -> BaseImage:
        return self._by_ref[ref]

    def _resolve(self, name: str, platform: str) -> BaseImage:
        image = self._resolve_any(name, platform)
        _check_platform(image, platform)
        return image

    def _resolve_any(self, name: str, platform: str) -> BaseImage:
        from builder.image import LAYOUT_SCHEME
        from builder.image.manifest import image_complete, read_image
        from builder.registry.reference import parse_reference

        if name.startswith(LAYOUT_SCHEME):
            return self._from_layout(name, platform)
        ref = parse_reference(name)
        if not self.pull_always:
            # As docker build: an image already in the local store is used as it is; --pull
            # asks the registry whether its tag has moved.
            local = ref.digest or self.images.resolve(str(ref))
            if local and image_complete(self.blobs, local):
                stored = read_image(self.blobs, local)
                local_image = BaseImage(f"{_without_digest(ref)}@{local}", local, stored.config, stored.layers, True)
                if ref.digest or _serves(stored.config, platform):
                    return local_image
                # A local tag made for another platform: the registry may have this one (BuildKit asks it);
                # if it cannot say, the local image's platform is the error to show.
                from builder.errors import BuildError

                try:
                    return self._from_registry(ref, platform)
                except (BuildError, OSError):
                    return local_image
        return self._from_registry(ref, platform)

    def _from_registry(self, ref, platform: str) -> BaseImage:
        digest, manifest, media_type = self.client.resolve(ref, parse_platform(platform))
        # The manifest is stored only in ensure_layers, once every layer is: a build whose pull
        # fails or is killed must not leave an image whose layers are missing.
        document = json.loads(manifest)
        if media_type in INDEX_TYPES:  # resolve() returns the platform's manifest; defensive only
            raise ValueError(f"{ref}: expected an image manifest, got an index")
        config_desc = Descriptor.from_json(document["config"])
        if not self.blobs.has(config_desc.digest):
            self.client.fetch_blob(ref, config_desc, self.blobs)
        config = ImageConfig.from_json(self.blobs.get_bytes(config_desc.digest))
        layers = tuple(Descriptor.from_json(d) for d in document.get("layers", []))
        name = str(ref) if ref.tag and not ref.digest else ""
        return BaseImage(f"{_without_digest(ref)}@{digest}", digest, config, layers, False, name, manifest)

    def _from_layout(self, name: str, platform: str) -> BaseImage:
        """An image of an OCI layout directory: its manifest, config and layers are copied into
        the blob store (each verified against its digest), so it is a local image from then on."""
        from builder.plumbing.records import replace

        from builder.errors import DigestMismatch, SourceNotFound
        from builder.image.layout import ImageLayout, parse_layout_ref

        layout = ImageLayout(parse_layout_ref(name))
        desc, manifest = layout.image_manifest(_platform_test(platform))
        document = json.loads(manifest)
        config_desc = Descriptor.from_json(document["config"])
        layers = tuple(Descriptor.from_json(d) for d in document.get("layers", []))
        for blob in (config_desc, *layers):
            if self.blobs.has(blob.digest):
                continue
            try:
                with open(layout.blob_path(blob.digest), "rb") as stream:
                    self.blobs.put_stream(stream, blob.digest)
            except FileNotFoundError:
                raise SourceNotFound(f"{layout.ref}: blob {blob.digest} is missing") from None
            except DigestMismatch:
                raise SourceNotFound(f"{layout.ref}: blob {blob.digest} does not match its digest") from None
        config = ImageConfig.from_json(self.blobs.get_bytes(config_desc.digest))
        if not self.blobs.has(desc.digest):
            self.blobs.put_bytes(manifest, desc.digest)
        return BaseImage(f"{replace(layout.ref, digest='')}@{desc.digest}", desc.digest, config, layers, True)

    def ensure_layers(self, ref: str) -> bool:
        """Makes sure every layer blob of a resolved base image is in the blob store; says
        whether anything had to be fetched."""
        image = self._by_ref[ref]
        missing = [d for d in image.layers if not self.blobs.has(d.digest)]
        if missing:
            if image.local:
                from builder.errors import BlobNotFound

                raise BlobNotFound(f"{ref}: layer {missing[0].digest} is missing from the local store")
            from builder.registry.reference import parse_reference

            self.client.fetch_blobs(parse_reference(ref), missing, self.blobs)
        if not image.local and not self.blobs.has(image.manifest_digest):
            self.blobs.put_bytes(image.manifest, image.manifest_digest)  # verified against the digest
        if image.name:  # pulled whole: it is a local image now, as after `docker pull`
            self.images.tag(image.name, image.manifest_digest)
        return bool(missing)


def _platform_test(platform: str):
    """A test of (os, architecture, variant) for PLATFORM, as a base image is matched."""
    from builder.image.platform_spec import parse_platform_specifier, platform_matches

    spec = parse_platform_specifier(platform)
    return lambda os_, arch, variant: platform_matches(spec, os_, arch, variant)


def _serves(config: ImageConfig, platform: str) -> bool:
    from builder.image.platform_spec import parse_platform_specifier, platform_matches

    return platform_matches(parse_platform_specifier(platform), config.os, config.architecture, config.variant)


def _check_platform(image: BaseImage, platform: str) -> None:
    """A base image (a local one, or a registry's single manifest) made for another platform fails as
    in BuildKit, rather than giving an image of the wrong architecture."""
    from builder.errors import SourceNotFound

    config = image.config
    if not _serves(config, platform):
        have = "/".join(p for p in (config.os, config.architecture, config.variant) if p)
        raise SourceNotFound(f"{image.ref.partition('@')[0]}: no match for platform {platform} in manifest "
                             f"{image.manifest_digest} (the image is {have}): not found")


def _without_digest(ref) -> str:
    name = f"{ref.registry}/{ref.repository}"
    return f"{name}:{ref.tag}" if ref.tag else name
