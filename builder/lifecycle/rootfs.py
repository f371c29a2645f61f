"""`import` and `export`: a root filesystem tar to a one-layer image, and an image to a flat tar.

`import` keeps the tar's entries as they are (like `docker import`): the layer is the given tar,
decompressed if it was compressed (gzip, bzip2, xz, zstd), stored uncompressed (as every layer a
build makes: outputs compress it when they need to), and its
diff_id is the digest of the tar itself. `--change` lines are Dockerfile instructions applied to
the new image's config (CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL,
USER, VOLUME, WORKDIR), as with `docker import --change`.

`export` applies the image's layers in order onto an empty directory (whiteouts delete) and
writes that tree as one tar: what `docker export` gives for a container of the image.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import gzip
import hashlib
import os
import platform
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from typing import BinaryIO, Sequence

from builder.errors import BuildError, ExportError, ParseError, StoreError
from builder.image import media
from builder.image.config import HistoryEntry, ImageConfig, RuntimeConfig
from builder.image.exporters import write_file_atomically, write_tree_tar
from builder.image.manifest import write_image
from builder.image.media import Descriptor, Platform
from builder.plumbing.records import dataclass, replace
from builder.registry.platforms import normalize_platform
from builder.registry.reference import parse_reference
from builder.store import Store

from .inventory import find_image
from .layertar import CorruptLayer, decompressed

_CHUNK = 1 << 20
_CHANGE_KEYWORDS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL", "ONBUILD", "STOPSIGNAL",
                    "USER", "VOLUME", "WORKDIR")


class InvalidRootfs(StoreError):
    """Input to `import` that is not a tar archive."""


@dataclass(frozen=True)
class ImportedImage:
    image_id: str
    manifest_digest: str
    name: str | None


def import_rootfs(store: Store, stream: BinaryIO, *, name: str | None = None, changes: Sequence[str] = (),
                  message: str = "", source: str = "-") -> ImportedImage:
    """Make a one-layer image of the root filesystem tar in STREAM (SOURCE names it in errors)."""
    ref = parse_reference(name) if name else None
    if ref is not None and ref.digest:
        raise StoreError(f"refusing to create a tag with a digest reference: {name}")
    runtime = apply_changes(RuntimeConfig(), changes)
    with store:
        fd, tar_path = tempfile.mkstemp(dir=store.blobs.tmp_dir, prefix="import-")
        try:
            with os.fdopen(fd, "wb") as out:
                diff_id = _copy_decompressed(stream, out, source)
            _check_tar(tar_path, source, diff_id)
            # Kept uncompressed, as a build's layers are: save and push compress it when they need to.
            with open(tar_path, "rb") as tar:
                digest = store.blobs.put_stream(tar, expected=diff_id)
            size = store.blobs.size(digest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tar_path)
        created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        architecture = normalize_platform(Platform("linux", platform.machine())).architecture
        config = ImageConfig(architecture=architecture, os="linux", created=created, config=runtime,
                             diff_ids=(diff_id,),
                             history=(HistoryEntry(created=created, comment=message or f"Imported from {source}"),))
        image = write_image(store.blobs, config, [Descriptor(media.OCI_LAYER, digest, size)])
        if ref is not None:
            store.images.tag(str(ref), image.manifest.digest)
        return ImportedImage(image.image_id, image.manifest.digest, str(ref) if ref else None)


def _copy_decompressed(stream: BinaryIO, out: BinaryIO, source: str) -> str:
    digest = hashlib.sha256()
    try:
        with decompressed(stream, source) as data:
            for chunk in iter(lambda: data.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
    except (EOFError, zlib.error, CorruptLayer, gzip.BadGzipFile) as e:
        raise InvalidRootfs(f"{source}: cannot read the archive: {e}") from None
    except OSError as e:  # words only: never the scratch file's path or an errno number
        reason = "no space left on the store's disk" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (
            (e.strerror or str(e)).lower())
        raise InvalidRootfs(f"{source}: cannot import the archive: {reason}") from None
    return "sha256:" + digest.hexdigest()


def _check_tar(path: str, source: str, diff_id: str) -> None:
    """The tar must unpack as FROM would unpack its layer (no `..`, no hard link out of it, no
    truncated member, within the unpack bounds), checked before anything is stored."""
    from builder.snapshot.layers import LayerError, check_layer

    if os.path.getsize(path) == 0:
        raise InvalidRootfs(f"{source}: empty input, not a tar archive")
    try:
        with open(path, "rb") as tar:
            checked = check_layer(tar)
    except LayerError as e:
        raise InvalidRootfs(f"{source}: not a tar archive to import: {e}") from None
    if checked != diff_id:  # the file changed under us
        raise InvalidRootfs(f"{source}: the archive changed while it was imported")


def apply_changes(config: RuntimeConfig, changes: Sequence[str]) -> RuntimeConfig:
    """CONFIG with each Dockerfile instruction of CHANGES applied, like `docker import --change`."""
    from builder.grammar import nodes, parse_dockerfile

    for change in changes:
        try:
            parsed = parse_dockerfile(f"FROM scratch\n{change}", "--change")
        except ParseError as e:
            raise BuildError(f"invalid --change {change!r}: {e.message}") from None
        for node in parsed.instructions[1:]:
            if node.keyword not in _CHANGE_KEYWORDS:
                raise BuildError(f"{node.keyword} is not a valid change command")
            config = _apply(config, node, nodes, parsed.escape)
    return config


def _apply(config: RuntimeConfig, node, nodes, escape: str) -> RuntimeConfig:
    from builder.expand import expand_instruction

    env = dict(item.partition("=")[::2] for item in config.env)
    node = expand_instruction(node, env, escape, filename="--change")
    shell = config.shell or ("/bin/sh", "-c")

    def command(cmd) -> tuple[str, ...]:
        return tuple(cmd.args) if isinstance(cmd, nodes.ExecCommand) else shell + (cmd.text,)

    if isinstance(node, nodes.Cmd):
        return replace(config, cmd=command(node.command))
    if isinstance(node, nodes.Entrypoint):
        return replace(config, entrypoint=command(node.command))
    if isinstance(node, nodes.Env):
        for key, value in node.pairs:
            env.pop(key, None)
            env[key] = value
        return replace(config, env=tuple(f"{k}={v}" for k, v in env.items()))
    if isinstance(node, nodes.Label):
        return replace(config, labels=tuple({**dict(config.labels), **dict(node.pairs)}.items()))
    if isinstance(node, nodes.Expose):
        return replace(config, exposed_ports=config.exposed_ports + tuple(_port(p) for p in node.ports))
    if isinstance(node, nodes.Volume):
        return replace(config, volumes=config.volumes + tuple(node.paths))
    if isinstance(node, nodes.User):
        return replace(config, user=node.user)
    if isinstance(node, nodes.Workdir):
        return replace(config, working_dir=posixpath.normpath(posixpath.join(config.working_dir or "/", node.path)))
    if isinstance(node, nodes.Stopsignal):
        return replace(config, stop_signal=node.signal)
    if isinstance(node, nodes.Onbuild):
        return replace(config, on_build=config.on_build + (node.trigger.original,))
    if isinstance(node, nodes.Healthcheck):
        from builder.image.config import Healthcheck

        if node.command is None:
            return replace(config, healthcheck=Healthcheck(test=("NONE",)))
        test = (("CMD",) + tuple(node.command.args) if isinstance(node.command, nodes.ExecCommand)
                else ("CMD-SHELL", node.command.text))
        return replace(config, healthcheck=Healthcheck(test, node.interval, node.timeout, node.start_period,
                                                       node.start_interval, node.retries))
    raise BuildError(f"{node.keyword} is not a valid change command")


def _port(port: str) -> str:
    number, _, proto = port.partition("/")
    return f"{number}/{(proto or 'tcp').lower()}"


def export_rootfs(store: Store, name: str, dest: str) -> None:
    """Write the image NAME's flattened root filesystem to DEST as a tar (atomically)."""
    from builder.snapshot.layers import apply_layer

    with store:
        record = find_image(store, name)
        parent = os.path.dirname(os.path.abspath(dest))
        try:
            stage = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(dest)}.", suffix=".rootfs")
        except OSError as e:
            raise ExportError(f"cannot write {dest}: {e.strerror or e}") from None
        try:
            os.chmod(stage, 0o755)
            for layer in record.image.layers:
                with store.blobs.open(layer.digest) as stream:
                    apply_layer(stream, stage)
            write_file_atomically(dest, lambda out: write_tree_tar(stage, out))
        finally:
            shutil.rmtree(stage, ignore_errors=True)

