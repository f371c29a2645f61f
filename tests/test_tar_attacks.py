"""The tar attack corpus (tests/support/tar_attacks.py) through every way a tar comes in: ADD's
extraction, `load` (docker and OCI archives), `import`, and a malicious base image pulled from a
registry and unpacked as FROM does. Blocked means: nothing appears outside the destination (the
host target stays absent, the host directory unchanged), and the attempt either is refused with
the project's own error or lands inside. The run's figure: "tar attacks: N/N blocked"."""

from __future__ import annotations

import gzip
import hashlib
import io
import os

import pytest

from builder.cache.blobs import BlobStore
from builder.errors import BuildError
from builder.image.config import ImageConfig
from builder.image.manifest import write_image
from builder.image.media import OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor, Platform
from builder.lifecycle.image_archive import load_archive
from builder.lifecycle.rootfs import import_rootfs
from builder.registry import RegistryClient, parse_reference
from builder.snapshot.layers import chain_ids
from builder.solver.archive import extract
from builder.store import Store
from tests.support import tar_attacks
from tests.support.memory_registry import MemoryRegistryTransport
from tests.test_load_import_validation import docker_archive, oci_archive

pytestmark = [pytest.mark.root]  # owners and device nodes as unpacking keeps them


def _through_add(tmp_path, name: str, layer: bytes) -> None:
    archive = tmp_path / f"{name}.tar"
    archive.write_bytes(layer)
    dest = tmp_path / f"add-{name}"
    dest.mkdir()
    extract(str(archive), str(dest))


def _through_load(tmp_path, name: str, layer: bytes) -> None:
    store = Store(str(tmp_path / "store"))
    load_archive(store, io.BytesIO(docker_archive(layer, compress=True)), f"{name}.tar")
    load_archive(store, io.BytesIO(oci_archive(layer)), f"{name}.tar")
    _unpack_every_image(store)


def _through_import(tmp_path, name: str, layer: bytes) -> None:
    store = Store(str(tmp_path / "store"))
    import_rootfs(store, io.BytesIO(layer), name=f"attack-{name}:1")
    _unpack_every_image(store)


def _through_base_image(tmp_path, name: str, layer: bytes) -> None:
    """Pushed to a registry as an image, pulled, unpacked as the lower dir FROM mounts."""
    upstream = BlobStore(str(tmp_path / f"upstream-{name}"))
    blob = gzip.compress(layer, mtime=0)
    digest = upstream.put_bytes(blob)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    image = write_image(upstream, ImageConfig(diff_ids=(diff_id,)), [Descriptor(OCI_LAYER_GZIP, digest, len(blob))])
    ref = parse_reference(f"registry.example/attack/{name}:1")
    with RegistryClient(transport=MemoryRegistryTransport()) as client:
        client.push(ref, upstream, upstream.get_bytes(image.manifest.digest), OCI_MANIFEST)
        store = Store(str(tmp_path / "store"))
        pulled = client.pull(ref, store.blobs, Platform("linux", "amd64"))
    for layer_desc, chain_id in zip(pulled.layers, chain_ids([diff_id])):
        store.snapshots.ensure(chain_id, lambda d=layer_desc: store.blobs.open(d.digest))


def _unpack_every_image(store: Store) -> None:
    """What a later FROM of the stored image does: unpack its layers as snapshots."""
    from builder.lifecycle.inventory import list_images

    for record in list_images(store):
        image = record.image
        for layer, chain_id in zip(image.layers, chain_ids(image.config.diff_ids)):
            store.snapshots.ensure(chain_id, lambda d=layer: store.blobs.open(d.digest))


ENTRY_POINTS = {"ADD": _through_add, "load": _through_load, "import": _through_import,
                "base image": _through_base_image}


def _host_state(host: str) -> list[tuple[str, int]]:
    return sorted((os.path.relpath(os.path.join(d, n), host), os.lstat(os.path.join(d, n)).st_size)
                  for d, dirs, files in os.walk(host) for n in dirs + files)


def test_every_tar_attack_is_blocked_at_every_entry_point(tmp_path, record_property):
    host = tmp_path / "host"
    host.mkdir()
    (host / "keep").write_text("the host's own file\n")
    target = str(host / "victim")
    attacks = {**tar_attacks.refused(target), **tar_attacks.contained(target)}
    refused_names = set(tar_attacks.refused(target))
    before = _host_state(str(host))
    outcomes: list[tuple[str, str, bool, str]] = []
    for entry, through in ENTRY_POINTS.items():
        for name, layer in sorted(attacks.items()):
            work = tmp_path / f"{entry.replace(' ', '-')}-{name}"
            work.mkdir()
            try:
                through(work, name, layer)
                result = "accepted"
            except BuildError as e:
                result = f"refused: {e}"
            except Exception as e:  # noqa: BLE001 - a stray exception is a failure to report
                result = f"BUG {type(e).__name__}: {e}"
            escaped = os.path.lexists(target) or _host_state(str(host)) != before
            # load and import must refuse what unpacking refuses, never store it for later
            must_refuse = name in refused_names and entry in ("load", "import", "base image")
            blocked = not escaped and not result.startswith("BUG") and (
                result.startswith("refused") or not must_refuse)
            outcomes.append((entry, name, blocked, result))
    blocked = sum(1 for *_, ok, _ in outcomes if ok)
    figure = f"tar attacks: {blocked}/{len(outcomes)} blocked ({len(attacks)} attacks x {len(ENTRY_POINTS)} entry points)"
    record_property("figure", figure)
    print(figure)
    assert blocked == len(outcomes), "\n".join(
        f"{entry} / {name}: {result}" for entry, name, ok, result in outcomes if not ok)
