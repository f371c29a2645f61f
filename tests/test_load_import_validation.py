"""`load` and `import` check every layer as FROM would unpack it, before anything is stored: a `..`
entry, a hard link out of the layer, truncated data or a file beyond the unpack bounds rejects the
archive whole, with a one-line error that names no store path and no errno."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

from builder.errors import StoreError
from builder.lifecycle.image_archive import load_archive
from builder.lifecycle.rootfs import import_rootfs
from builder.store import Store
from tests.support import tar_attacks
from tests.test_cli_images import cli

TARGET = "/tmp/build-image-load-validation-victim"  # aimed at, never written: checked below


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _config(diff_id: str) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()


def docker_archive(layer_tar: bytes, compress: bool = False) -> bytes:
    """A docker archive (legacy paths) of one image whose one layer is LAYER_TAR, with every digest
    and diff_id right: only the layer's content is wrong."""
    layer = gzip.compress(layer_tar, mtime=0) if compress else layer_tar
    config = _config(_digest(layer_tar))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add(tar, "config.json", config)
        _add(tar, "layer/layer.tar", layer)
        _add(tar, "manifest.json", json.dumps(
            [{"Config": "config.json", "RepoTags": ["hostile:1"], "Layers": ["layer/layer.tar"]}]).encode())
    return out.getvalue()


def oci_archive(layer_tar: bytes) -> bytes:
    layer = gzip.compress(layer_tar, mtime=0)
    config = _config(_digest(layer_tar))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _digest(layer),
                    "size": len(layer)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
        "size": len(manifest), "annotations": {"io.containerd.image.name": "docker.io/library/hostile:1"}}]})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", index.encode())
        for blob in (config, layer, manifest):
            _add(tar, "blobs/sha256/" + _digest(blob)[7:], blob)
    return out.getvalue()


def store_state(root: str) -> tuple:
    """Everything a load or import could leave: blobs, scratch files, image names."""
    def listing(*parts):
        path = os.path.join(root, *parts)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    index = os.path.join(root, "images", "index.json")
    return (listing("blobs", "sha256"), listing("blobs", "tmp"),
            open(index).read() if os.path.exists(index) else "")


REFUSED = tar_attacks.refused(TARGET)


@pytest.mark.parametrize("attack", sorted(REFUSED))
def test_load_and_import_reject_a_hostile_layer_whole(store_root, attack):
    store = Store(store_root)
    layer = REFUSED[attack]
    before = store_state(store_root)
    archives = {"docker": docker_archive(layer), "docker-gzip": docker_archive(layer, compress=True),
                "oci": oci_archive(layer)}
    for kind, archive in archives.items():
        with pytest.raises(StoreError) as caught:
            load_archive(store, io.BytesIO(archive), "hostile.tar")
        assert "not a valid layer" in str(caught.value), (kind, str(caught.value))
        assert store_state(store_root) == before, kind
    with pytest.raises(StoreError) as caught:
        import_rootfs(store, io.BytesIO(layer), name="hostile:1", source="hostile.tar")
    assert "not a tar archive to import" in str(caught.value), str(caught.value)
    assert store_state(store_root) == before
    assert not os.path.lexists(TARGET)


def test_a_good_layer_still_loads_and_imports(store_root):
    layer = tar_attacks.tar_of(_file("etc/ok", b"fine\n"))
    store = Store(store_root)
    for archive in (docker_archive(layer), oci_archive(layer)):
        loaded = load_archive(store, io.BytesIO(archive), "good.tar")
        assert [image.names for image in loaded] == [("docker.io/library/hostile:1",)]
    assert import_rootfs(store, io.BytesIO(layer), name="good:1").name == "docker.io/library/good:1"


def _file(name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    return info, data


@pytest.mark.parametrize("attack", ["dotdot-file", "hardlink-absolute", "truncated-data"])
def test_the_cli_error_is_one_line_naming_the_input_not_the_store(store_root, tmp_path, attack):
    archive, rootfs = tmp_path / "hostile-image.tar", tmp_path / "hostile-rootfs.tar.gz"
    archive.write_bytes(docker_archive(REFUSED[attack], compress=True))
    rootfs.write_bytes(gzip.compress(REFUSED[attack]))
    for args in (["load", "-i", str(archive)], ["import", str(rootfs), "hostile:2"]):
        proc = cli(store_root, *args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("ERROR: "), (args, proc.stderr)
        assert store_root not in proc.stderr and "Errno" not in proc.stderr, proc.stderr
    assert "images" not in os.listdir(store_root) or "hostile" not in cli(store_root, "images").stdout


@pytest.mark.root
def test_a_full_disk_while_loading_is_told_in_words(tmp_path):
    """ENOSPC while staging: the message says the disk is full, not `[Errno 28] ... /root/blobs/tmp/...`."""
    tmpfs = tmp_path / "small"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tmpfs)], check=True)
    try:
        root = str(tmpfs / "store")
        layer = tar_attacks.tar_of(_file("big", os.urandom(1 << 20)))
        (tmp_path / "big-image.tar").write_bytes(docker_archive(layer))
        (tmp_path / "big-rootfs.tar").write_bytes(layer)
        for args in (["load", "-i", str(tmp_path / "big-image.tar")], ["import", str(tmp_path / "big-rootfs.tar")]):
            proc = cli(root, *args, check=False)
            assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
            assert "no space left on the store's disk" in proc.stderr, proc.stderr
            assert root not in proc.stderr and "Errno" not in proc.stderr, proc.stderr
    finally:
        subprocess.run(["umount", str(tmpfs)], check=True)
