"""`save` and `load`: images to and from docker-archive and OCI image-layout tars.

Saving writes one archive for several images: the docker format (manifest.json, repositories)
is also a full OCI layout, as Docker 25 writes it, so either kind of loader reads it.

Loading reads docker archives (Docker 25 and BuildKit's, and the legacy Docker <= 24 layout with
`<id>.json` and `<id>/layer.tar`) and OCI layouts, plain or compressed, from a file or a pipe. Every
member is staged in the blob store's scratch directory while its digest is computed; nothing enters
the store until the whole archive has been read and checked: blobs against the digests that name
them, layers against the config's diff_ids, manifests against the blobs they list. A corrupt or
truncated archive leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
import zlib
from typing import BinaryIO, Iterator, Sequence

from builder.errors import DigestMismatch, ExportError, StoreError
from builder.image import media
from builder.image.config import ImageConfig
from builder.image.exporters import (
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, OCI_LAYOUT_FILE,
    _blob_path, _compression, _decompressed_copy, _docker_repo_tag, _image_blobs, _index_entries,
    _manifest_file, _write_archive,
)
from builder.image.manifest import OutputManifest, StoredImage, for_output, manifest_bytes
from builder.image.media import Descriptor, Platform
from builder.plumbing.canonical import canonical_json
from builder.plumbing.compression import sniff_file
from builder.plumbing.files import fsync_directory
from builder.plumbing.records import dataclass, field
from builder.registry.platforms import select_manifest
from builder.registry.reference import InvalidReference, parse_reference
from builder.store import Store

from .inventory import ImageRecord, find_image, record_for, repository_tags

_CHUNK = 1 << 20
_MAX_JSON = 32 << 20


class InvalidArchive(StoreError):
    """An archive that is not, or not entirely, a docker or OCI image archive."""


# --- save -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaveItem:
    image: StoredImage
    names: tuple[str, ...]          # normalised names to record in the archive (none when saved by ID)


def select_for_save(store: Store, names: Sequence[str]) -> list[SaveItem]:
    """The images NAMES mean, as `docker save` reads them: `app:1` that tag, `app` every tag of
    the repository, an ID the image without names. One item per image, names merged."""
    items: dict[str, tuple[StoredImage, list[str]]] = {}
    for name in names:
        for record, recorded in _lookup_for_save(store, name):
            image, kept = items.setdefault(record.manifest_digest, (record.image, []))
            kept.extend(n for n in recorded if n not in kept)
    return [SaveItem(image, tuple(kept)) for image, kept in items.values()]


def _lookup_for_save(store: Store, name: str) -> list[tuple[ImageRecord, list[str]]]:
    try:
        ref = parse_reference(name)
    except InvalidReference:
        ref = None
    last = name.rpartition("/")[2]
    if ref is not None and ":" not in last and "@" not in name:
        tags = repository_tags(store, ref)
        if tags:
            return [(record_for(store, store.images.resolve(t)), [t]) for t in tags]
    record = find_image(store, name)
    if ref is not None and store.images.resolve(str(ref)) == record.manifest_digest:
        return [(record, [str(ref)])]
    return [(record, [])]


def save_images(store: Store, names: Sequence[str], dest: str, archive_format: str = "docker") -> list[SaveItem]:
    """Write the images NAMES mean to DEST as one archive ("docker" or "oci"); atomically. The OCI
    archive has OCI media types only, the docker one Docker's, whatever the images were pulled with."""
    if archive_format not in ("docker", "oci"):
        raise ExportError(f"unknown archive format {archive_format!r}: use docker or oci")
    with store:
        from builder.snapshot.compressed import compressed_image

        items = select_for_save(store, names)
        # Layers kept uncompressed in the store are saved gzip-compressed, as docker save does.
        outputs = [(item, for_output(store.blobs, compressed_image(store, item.image), oci=archive_format == "oci"))
                   for item in items]
        if archive_format == "oci":
            _write_oci_archive(store, outputs, dest)
        else:
            _write_docker_archive(store, outputs, dest)
    return items


_Outputs = Sequence[tuple[SaveItem, OutputManifest]]


def _all_blobs(outputs: _Outputs) -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}
    for _, out in outputs:
        for desc in _image_blobs(out.image):
            seen.setdefault(desc.digest, desc)
    return sorted(seen.values(), key=lambda d: d.digest)


def _files(outputs: _Outputs) -> dict[str, bytes]:
    """oci-layout, index.json and each image's manifest."""
    from builder.image.manifest import index_bytes

    entries = [entry for item, out in outputs for entry in _index_entries(out.image, item.names)]
    files = {"oci-layout": OCI_LAYOUT_FILE, "index.json": index_bytes(entries)}
    for _, out in outputs:
        files.update(_manifest_file(out))
    return files


def _write_oci_archive(store: Store, outputs: _Outputs, dest: str) -> None:
    _write_archive(dest, _files(outputs), _all_blobs(outputs), store.blobs)


def _write_docker_archive(store: Store, outputs: _Outputs, dest: str) -> None:
    with contextlib.ExitStack() as cleanup:
        entries, extra_files = [], {}
        repositories: dict[str, dict[str, str]] = {}
        for item, out in outputs:
            image = out.image
            layer_paths = []
            for layer, diff_id in zip(image.layers, image.config.diff_ids):
                if _compression(store.blobs, layer) == "zstd":
                    # Docker 20.10's `docker load` cannot read zstd: ship the tar itself, named by diff_id.
                    if _blob_path(diff_id) not in extra_files:
                        extra_files[_blob_path(diff_id)] = cleanup.enter_context(
                            _decompressed_copy(store.blobs, layer, diff_id))
                    layer_paths.append(_blob_path(diff_id))
                else:
                    layer_paths.append(_blob_path(layer.digest))
            repo_tags = [t for t in (_docker_repo_tag(n) for n in item.names) if t]
            entries.append({"Config": _blob_path(image.config_descriptor.digest), "RepoTags": repo_tags,
                            "Layers": layer_paths})
            if layer_paths:
                top = layer_paths[-1].rsplit("/", 1)[-1]
                for repo_tag in repo_tags:
                    repo, _, tag = repo_tag.rpartition(":")
                    repositories.setdefault(repo, {})[tag] = top
        files = {"manifest.json": canonical_json(entries), **_files(outputs)}
        if repositories:
            files["repositories"] = canonical_json(repositories)
        _write_archive(dest, files, _all_blobs(outputs), store.blobs, extra_files)


# --- load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedImage:
    image_id: str
    manifest_digest: str
    names: tuple[str, ...]          # normalised


@dataclass
class _Staged:
    """One archive member in a scratch file of the blob store, with its digest."""
    path: str
    digest: str
    size: int


@dataclass
class _Archive:
    source: str
    tmp_dir: str                                            # where members are staged
    files: dict[str, _Staged] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)     # legacy archives link repeated layers

    def member(self, name: str) -> _Staged | None:
        for _ in range(16):
            if name in self.files:
                return self.files[name]
            if name not in self.links:
                return None
            name = self.links[name]
        return None

    def require(self, name: str, what: str) -> _Staged:
        staged = self.member(_clean(name))
        if staged is None:
            raise InvalidArchive(f"{self.source}: {what} {name} is not in the archive")
        return staged

    def json(self, name: str, what: str):
        staged = self.require(name, what)
        return _read_json(staged, f"{self.source}: {what} {name}")

    def blob(self, digest: str, what: str) -> _Staged:
        algorithm, _, hexpart = digest.partition(":")
        staged = self.member(f"blobs/{algorithm}/{hexpart}")
        if staged is None:
            raise InvalidArchive(f"{self.source}: {what} {digest} is not in the archive")
        return staged


def load_archive(store: Store, stream: BinaryIO, source: str = "archive") -> list[LoadedImage]:
    """Load every image of the archive STREAM; all or nothing. SOURCE names it in errors."""
    with store, _staging(store, stream, source) as archive:
        if "index.json" in archive.files:
            planned = _plan_oci(archive)
        elif "manifest.json" in archive.files:
            planned = _plan_docker(archive)
        else:
            raise InvalidArchive(f"{source}: not an image archive (no manifest.json or index.json)")
        for plan in planned:
            for staged in plan.blobs:
                _commit(store, staged)
        loaded = []
        for plan in planned:
            for name in plan.names:
                store.images.tag(name, plan.manifest_digest)
            loaded.append(LoadedImage(plan.image_id, plan.manifest_digest, plan.names))
        return loaded


@dataclass(frozen=True)
class _Plan:
    manifest_digest: str
    image_id: str
    names: tuple[str, ...]
    blobs: tuple[_Staged, ...]


@contextlib.contextmanager
def _staging(store: Store, stream: BinaryIO, source: str) -> Iterator[_Archive]:
    archive = _Archive(source, store.blobs.tmp_dir)
    try:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for info in tar:
                    name = _clean(info.name)
                    if info.isreg():
                        archive.files[name] = _stage(archive.tmp_dir, tar.extractfile(info))
                    elif info.issym() or info.islnk():
                        target = info.linkname if info.islnk() else posixpath.join(posixpath.dirname(name), info.linkname)
                        archive.links[name] = _clean(target)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise InvalidArchive(f"{source}: not a valid image archive: {_describe(e)}") from None
        yield archive
    finally:
        for staged in archive.files.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged.path)


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, tarfile.TarError):
        # never the scratch file's path or an errno number: what failed, in words
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return "no space left on the store's disk"
        return (error.strerror or str(error) or type(error).__name__).lower()
    text = str(error) or type(error).__name__
    if isinstance(error, tarfile.ReadError) and "end of data" in text:
        return "truncated (unexpected end of data)"
    return text


def _stage(tmp_dir: str, data: BinaryIO) -> _Staged:
    fd, path = tempfile.mkstemp(dir=tmp_dir, prefix="load-")
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: data.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(path)
        raise
    return _Staged(path, "sha256:" + digest.hexdigest(), size)


def _commit(store: Store, staged: _Staged) -> None:
    if store.blobs.has(staged.digest):
        return
    os.chmod(staged.path, 0o644)
    target = store.blobs.path(staged.digest)
    os.rename(staged.path, target)
    fsync_directory(os.path.dirname(target))


def _clean(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _read_json(staged: _Staged, what: str):
    if staged.size > _MAX_JSON:
        raise InvalidArchive(f"{what} is {staged.size} bytes: too large for JSON metadata")
    with open(staged.path, "rb") as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise InvalidArchive(f"{what} is not valid JSON: {e}") from None


def _check_named_blobs(archive: _Archive) -> None:
    """Every blobs/<algorithm>/<hex> member must hash to its name."""
    for name, staged in archive.files.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs":
            expected = f"{parts[1]}:{parts[2]}"
            if parts[1] != "sha256":
                raise InvalidArchive(f"{archive.source}: unsupported digest algorithm in {name}")
            if staged.digest != expected:
                raise DigestMismatch(expected, staged.digest, f"{archive.source}: {name}")


def _plan_oci(archive: _Archive) -> list[_Plan]:
    _check_named_blobs(archive)
    index = archive.json("index.json", "index")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidArchive(f"{archive.source}: index.json has no manifests list")
    repo_tags = _docker_repo_tags(archive) if "manifest.json" in archive.files else {}
    plans: dict[str, _Plan] = {}
    for entry in index["manifests"]:
        desc = _descriptor(entry, archive.source, "index.json entry")
        names = _names_from_annotations(dict(desc.annotations))
        desc, chain = _platform_manifest(archive, desc)
        plan = _plan_manifest(archive, desc, chain)
        names += repo_tags.get(plan.image_id, ())
        previous = plans.get(plan.manifest_digest)
        merged = tuple(dict.fromkeys((previous.names if previous else ()) + names))
        plans[plan.manifest_digest] = _Plan(plan.manifest_digest, plan.image_id, merged, plan.blobs)
    return list(plans.values())


def _platform_manifest(archive: _Archive, desc: Descriptor) -> tuple[Descriptor, tuple[_Staged, ...]]:
    """DESC itself if it is an image manifest, else the host platform's manifest from the index
    it names (with the index blobs, which are stored too)."""
    chain: list[_Staged] = []
    for _ in range(4):
        staged = archive.blob(desc.digest, "manifest")
        doc = _read_json(staged, f"{archive.source}: manifest {desc.digest}")
        kind = desc.media_type or (doc.get("mediaType") if isinstance(doc, dict) else "")
        if kind not in media.INDEX_TYPES and not (isinstance(doc, dict) and "manifests" in doc and not kind):
            return desc, tuple(chain)
        chain.append(staged)
        entries = [_descriptor(m, archive.source, "index entry") for m in doc.get("manifests") or ()]
        chosen = select_manifest(entries, Platform())
        if chosen is None:
            raise InvalidArchive(f"{archive.source}: index {desc.digest} has no image for {Platform()}")
        desc = chosen
    raise InvalidArchive(f"{archive.source}: indexes nested too deeply")


def _plan_manifest(archive: _Archive, desc: Descriptor, chain: tuple[_Staged, ...]) -> _Plan:
    staged_manifest = archive.blob(desc.digest, "manifest")
    doc = _read_json(staged_manifest, f"{archive.source}: manifest {desc.digest}")
    what = f"{archive.source}: manifest {desc.digest}"
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2 or "config" not in doc:
        raise InvalidArchive(f"{what} is not an image manifest")
    config_desc = _descriptor(doc["config"], archive.source, "config descriptor")
    layers = [_descriptor(layer, archive.source, "layer descriptor") for layer in doc.get("layers") or ()]
    staged_config = archive.blob(config_desc.digest, f"config of manifest {desc.digest}:")
    config = _parse_config(staged_config, archive.source)
    staged_layers = [archive.blob(layer.digest, f"layer of manifest {desc.digest}:") for layer in layers]
    for layer, staged in zip(layers, staged_layers):
        if staged.size != layer.size:
            raise InvalidArchive(f"{what}: layer {layer.digest} is {staged.size} bytes, the manifest says {layer.size}")
    _check_diff_ids(archive.source, config, staged_layers)
    blobs = (*chain, staged_manifest, staged_config, *staged_layers)
    return _Plan(desc.digest, staged_config.digest, (), blobs)


def _plan_docker(archive: _Archive) -> list[_Plan]:
    _check_named_blobs(archive)
    entries = archive.json("manifest.json", "manifest")
    if not isinstance(entries, list):
        raise InvalidArchive(f"{archive.source}: manifest.json is not a list")
    plans = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise InvalidArchive(f"{archive.source}: manifest.json entry without a Config")
        staged_config = archive.require(entry["Config"], "config")
        _check_legacy_name(archive.source, entry["Config"], staged_config)
        config = _parse_config(staged_config, archive.source)
        staged_layers = [archive.require(path, "layer") for path in entry.get("Layers") or ()]
        _check_diff_ids(archive.source, config, staged_layers)
        config_desc = Descriptor(media.OCI_CONFIG, staged_config.digest, staged_config.size)
        layers = [Descriptor(_layer_media_type(s), s.digest, s.size) for s in staged_layers]
        data = manifest_bytes(config_desc, layers)
        manifest_digest = "sha256:" + hashlib.sha256(data).hexdigest()
        staged_manifest = _stage_bytes(archive, data, manifest_digest)
        names = tuple(_normalised(t) for t in entry.get("RepoTags") or () if _normalised(t))
        plans.append(_Plan(manifest_digest, staged_config.digest, names,
                           (staged_manifest, staged_config, *staged_layers)))
    return plans


def _stage_bytes(archive: _Archive, data: bytes, digest: str) -> _Staged:
    staged = _stage(archive.tmp_dir, io.BytesIO(data))
    archive.files[f"(manifest {digest})"] = staged  # so the staging cleanup removes it
    return staged


def _check_legacy_name(source: str, path: str, staged: _Staged) -> None:
    """`<hex>.json` (Docker <= 24) names the config by its digest: check it."""
    base = posixpath.basename(path)
    if base.endswith(".json") and len(base) == 69:
        expected = "sha256:" + base[:-5]
        if staged.digest != expected:
            raise DigestMismatch(expected, staged.digest, f"{source}: {path}")


def _docker_repo_tags(archive: _Archive) -> dict[str, tuple[str, ...]]:
    """Config digest -> names, from a docker archive's manifest.json."""
    found: dict[str, tuple[str, ...]] = {}
    entries = archive.json("manifest.json", "manifest")
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("Config"), str):
            staged = archive.member(_clean(entry["Config"]))
            if staged is not None:
                names = tuple(_normalised(t) for t in entry.get("RepoTags") or () if _normalised(t))
                found[staged.digest] = found.get(staged.digest, ()) + names
    return found


def _names_from_annotations(annotations: dict[str, str]) -> tuple[str, ...]:
    """containerd's full image name, else a ref.name that is a whole reference (not a bare tag)."""
    name = annotations.get(ANNOTATION_CONTAINERD_NAME) or ""
    if not name:
        ref_name = annotations.get(ANNOTATION_REF_NAME) or ""
        if ":" in ref_name or "/" in ref_name:
            name = ref_name
    normalised = _normalised(name) if name else ""
    return (normalised,) if normalised else ()


def _normalised(name: str) -> str:
    try:
        ref = parse_reference(name)
    except InvalidReference:
        return ""
    return "" if ref.digest else str(ref)


def _descriptor(entry, source: str, what: str) -> Descriptor:
    try:
        desc = Descriptor.from_json(entry)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InvalidArchive(f"{source}: malformed {what}") from None
    if not isinstance(desc.digest, str) or not desc.digest.startswith("sha256:") or len(desc.digest) != 71:
        raise InvalidArchive(f"{source}: {what} has an invalid digest {desc.digest!r}")
    return desc


def _parse_config(staged: _Staged, source: str) -> ImageConfig:
    doc = _read_json(staged, f"{source}: config {staged.digest}")
    try:
        return ImageConfig.from_json(doc)
    except (ValueError, TypeError, AttributeError) as e:
        raise InvalidArchive(f"{source}: config {staged.digest} is not an image config: {e}") from None


def _check_diff_ids(source: str, config: ImageConfig, layers: Sequence[_Staged]) -> None:
    """Each layer must unpack (the checks FROM's unpacking makes, nothing written) and, decompressed,
    hash to the config's diff_id for it (as docker load checks)."""
    if len(config.diff_ids) != len(layers):
        raise InvalidArchive(f"{source}: the config lists {len(config.diff_ids)} layers, the manifest {len(layers)}")
    for staged, diff_id in zip(layers, config.diff_ids):
        actual = _checked_diff_id(staged, source)
        if actual != diff_id:
            raise DigestMismatch(diff_id, actual, f"{source}: uncompressed layer {staged.digest}")


def _checked_diff_id(staged: _Staged, source: str) -> str:
    from builder.snapshot.layers import LayerError, check_layer

    try:
        with open(staged.path, "rb") as f:
            return check_layer(f)
    except LayerError as e:
        raise InvalidArchive(f"{source}: layer {staged.digest} is not a valid layer: {e}") from None


def _layer_media_type(staged: _Staged) -> str:
    return {"gzip": media.OCI_LAYER_GZIP, "zstd": media.OCI_LAYER_ZSTD}.get(
        sniff_file(staged.path), media.OCI_LAYER)
