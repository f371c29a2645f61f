"""Exporters: a hand-made busybox image written out as OCI archive, docker archive, OCI layout and rootfs,
then read back by the real tools (skopeo, umoci, runc)."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import uuid
from dataclasses import dataclass

import pytest

from builder.cache.blobs import BlobStore, sha256_digest
from builder.errors import BlobNotFound, DigestMismatch, ExportError
from builder.image import media
from builder.image.config import HistoryEntry, ImageConfig, RuntimeConfig
from builder.image.exporters import (
    DockerArchiveExporter,
    LocalExporter,
    OCIArchiveExporter,
    OCILayoutExporter,
    oci_ref_name,
)
from builder.image.manifest import StoredImage, write_image
from builder.image.media import Descriptor
from tests.support.rootfs import make_busybox_rootfs

NAME = "docker.io/library/tiny:v1"
HELLO = b"hello from the image\n"


@dataclass(frozen=True)
class Built:
    image: StoredImage
    blobs: BlobStore


def _layer(blobs: BlobStore, fill, compression: str = "gzip") -> tuple[Descriptor, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        fill(tar)
    data = raw.getvalue()
    if compression == "zstd":
        blob = subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
        media_type = media.OCI_LAYER_ZSTD
    else:
        blob, media_type = gzip.compress(data, mtime=0), media.OCI_LAYER_GZIP
    return Descriptor(media_type, blobs.put_bytes(blob), len(blob)), sha256_digest(data)


def _rootfs_layer(blobs: BlobStore, root: str, compression: str) -> tuple[Descriptor, str]:
    def fill(tar: tarfile.TarFile) -> None:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                tar.add(path, arcname=os.path.relpath(path, root), recursive=False)
    return _layer(blobs, fill, compression)


def _file_layer(blobs: BlobStore, compression: str) -> tuple[Descriptor, str]:
    def fill(tar: tarfile.TarFile) -> None:
        hello = tarfile.TarInfo("hello.txt")
        hello.size, hello.mode = len(HELLO), 0o644
        tar.addfile(hello, io.BytesIO(HELLO))
        tar.addfile(tarfile.TarInfo("etc/.wh.motd"))  # whiteout: this layer deletes /etc/motd
    return _layer(blobs, fill, compression)


def _make_image(blobs: BlobStore, tmp_path, compression: str = "gzip") -> StoredImage:
    root = make_busybox_rootfs(str(tmp_path / "rootfs"))
    with open(os.path.join(root, "etc/motd"), "w") as f:
        f.write("deleted by the second layer\n")
    base, base_diff = _rootfs_layer(blobs, root, compression)
    top, top_diff = _file_layer(blobs, compression)
    config = ImageConfig(
        created="2026-11-23T07:35:00Z",
        config=RuntimeConfig(
            user="app",
            env=("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hi there"),
            cmd=("/bin/cat", "/hello.txt"),
            working_dir="/home/app",
            labels=(("org.example.purpose", "test"),),
            exposed_ports=("8080/tcp",),
        ),
        diff_ids=(base_diff, top_diff),
        history=(
            HistoryEntry("2026-11-23T07:34:00Z", "ADD busybox /"),
            HistoryEntry("2026-11-23T07:35:00Z", "ENV GREETING=hi there", empty_layer=True),
            HistoryEntry("2026-11-23T07:35:00Z", "COPY hello.txt /"),
        ),
    )
    return write_image(blobs, config, [base, top])


@pytest.fixture
def built(tmp_path) -> Built:
    blobs = BlobStore(str(tmp_path / "blobs"))
    return Built(_make_image(blobs, tmp_path), blobs)


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} failed: {proc.stderr}"
    return proc.stdout


# --- OCI archive ---


@pytest.mark.tools
def test_oci_archive_is_read_by_skopeo(built, tmp_path):
    dest = str(tmp_path / "image.tar")
    OCIArchiveExporter(dest, names=[NAME]).export(built.image, built.blobs)

    raw = _run("skopeo", "inspect", "--raw", f"oci-archive:{dest}")
    assert raw.encode() == built.blobs.get_bytes(built.image.manifest.digest)
    config = _run("skopeo", "inspect", "--config", "--raw", f"oci-archive:{dest}:v1")
    assert config.encode() == built.image.config.to_bytes()

    info = json.loads(_run("skopeo", "inspect", f"oci-archive:{dest}:v1"))
    assert info["Digest"] == built.image.manifest.digest
    assert info["Env"] == ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hi there"]
    assert info["Labels"] == {"org.example.purpose": "test"}
    assert info["Layers"] == [layer.digest for layer in built.image.layers]
    assert (info["Architecture"], info["Os"]) == ("amd64", "linux")
    detail = json.loads(_run("skopeo", "inspect", "--config", f"oci-archive:{dest}"))
    assert detail["config"]["Cmd"] == ["/bin/cat", "/hello.txt"] and detail["config"]["User"] == "app"


def test_archive_is_deterministic_and_sorted(built, tmp_path):
    first, second = str(tmp_path / "a.tar"), str(tmp_path / "b.tar")
    OCIArchiveExporter(first, names=[NAME]).export(built.image, built.blobs)
    OCIArchiveExporter(second, names=[NAME]).export(built.image, built.blobs)
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()

    with tarfile.open(first) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert {"oci-layout", "index.json", "blobs/sha256"} <= set(names)
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and not m.uname for m in members)
        index = json.load(tar.extractfile("index.json"))
        assert json.load(tar.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    [entry] = index["manifests"]
    assert entry["digest"] == built.image.manifest.digest
    assert entry["annotations"] == {"io.containerd.image.name": NAME, "org.opencontainers.image.ref.name": "v1"}
    assert os.stat(first).st_mode & 0o777 == 0o644


def test_ref_names_are_the_tag_part():
    assert oci_ref_name("docker.io/library/app:1.2") == "1.2"
    assert oci_ref_name("localhost:5000/team/app") == "latest"
    assert oci_ref_name("localhost:5000/team/app:dev") == "dev"
    assert oci_ref_name("docker.io/library/app@sha256:" + "a" * 64) == ""


# --- docker archive ---


@pytest.mark.tools
def test_docker_archive_is_read_by_skopeo(built, tmp_path):
    dest = str(tmp_path / "docker.tar")
    DockerArchiveExporter(dest, names=[NAME, "registry.example:5000/team/tiny:dev"]).export(built.image, built.blobs)
    with tarfile.open(dest) as tar:
        [entry] = json.load(tar.extractfile("manifest.json"))
        repositories = json.load(tar.extractfile("repositories"))
        config_bytes = tar.extractfile(entry["Config"]).read()
    assert entry["RepoTags"] == ["tiny:v1", "registry.example:5000/team/tiny:dev"]
    assert entry["Layers"] == [f"blobs/sha256/{layer.digest[7:]}" for layer in built.image.layers]
    assert config_bytes == built.image.config.to_bytes()
    assert set(repositories) == {"tiny", "registry.example:5000/team/tiny"}

    layout = str(tmp_path / "copied")
    _run("skopeo", "copy", "--quiet", f"docker-archive:{dest}", f"oci:{layout}:x")
    config = json.loads(_run("skopeo", "inspect", "--config", "--raw", f"oci:{layout}:x"))
    assert config["rootfs"]["diff_ids"] == list(built.image.config.diff_ids)
    assert config["config"]["Env"] == list(built.image.config.config.env)
    # The docker archive is also an OCI layout, as Docker 25's `docker save` writes it; with Docker media
    # types by default (skopeo's oci-archive: reads only OCI-typed entries, so see the test below).
    with tarfile.open(dest) as tar:
        entries = json.load(tar.extractfile("index.json"))["manifests"]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{entries[0]['digest'][7:]}"))
    docker_manifest = "application/vnd.docker.distribution.manifest.v2+json"
    assert [e["mediaType"] for e in entries] == [docker_manifest, docker_manifest]  # one per name
    assert manifest["mediaType"] == docker_manifest
    assert manifest["config"]["digest"] == built.image.image_id


@pytest.mark.tools
def test_docker_archive_with_oci_mediatypes_is_also_an_oci_archive(built, tmp_path):
    dest = str(tmp_path / "docker.tar")
    DockerArchiveExporter(dest, names=[NAME], oci_mediatypes=True).export(built.image, built.blobs)
    raw = _run("skopeo", "inspect", "--raw", f"oci-archive:{dest}:v1")
    assert json.loads(raw)["config"]["digest"] == built.image.image_id
    assert json.loads(raw)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.tools
def test_docker_archive_ships_zstd_layers_as_plain_tars(tmp_path):
    # Docker 20.10's `docker load` rejects zstd layers ("invalid tar header"); gzip and plain tars load.
    blobs = BlobStore(str(tmp_path / "blobs"))
    image = _make_image(blobs, tmp_path, compression="zstd")
    dest = str(tmp_path / "docker.tar")
    DockerArchiveExporter(dest, names=[NAME]).export(image, blobs)
    with tarfile.open(dest) as tar:
        [entry] = json.load(tar.extractfile("manifest.json"))
        assert entry["Layers"] == [f"blobs/sha256/{d[7:]}" for d in image.config.diff_ids]
        for path, diff_id in zip(entry["Layers"], image.config.diff_ids):
            assert sha256_digest(tar.extractfile(path).read()) == diff_id
        # The OCI side of the archive still holds the zstd blobs its manifest names.
        assert {f"blobs/sha256/{layer.digest[7:]}" for layer in image.layers} <= set(tar.getnames())
    assert os.listdir(blobs.tmp_dir) == []
    layout = str(tmp_path / "copied")
    _run("skopeo", "copy", "--quiet", f"docker-archive:{dest}", f"oci:{layout}:x")
    config = json.loads(_run("skopeo", "inspect", "--config", "--raw", f"oci:{layout}:x"))
    assert config["rootfs"]["diff_ids"] == list(image.config.diff_ids)


# --- OCI layout directory ---


@pytest.mark.tools
@pytest.mark.root
def test_oci_layout_unpacks_with_umoci_and_runs_with_runc(built, tmp_path):
    layout, bundle = str(tmp_path / "layout"), str(tmp_path / "bundle")
    OCILayoutExporter(layout, names=[NAME]).export(built.image, built.blobs)
    _run("umoci", "unpack", "--image", f"{layout}:v1", bundle)

    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    assert spec["process"]["user"]["uid"] == 1000  # "app", resolved from the image's /etc/passwd
    assert spec["process"]["cwd"] == "/home/app"
    assert "GREETING=hi there" in spec["process"]["env"]
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/sh", "-c", "id -u; pwd; echo $GREETING; cat /hello.txt; "
                                                "test -e /etc/motd || echo motd-gone"]
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f)

    state, container = str(tmp_path / "runc-state"), f"build-image-test-{uuid.uuid4().hex[:12]}"
    try:
        out = _run("runc", "--root", state, "run", "--bundle", bundle, container)
    finally:
        subprocess.run(["runc", "--root", state, "delete", "-f", container], capture_output=True)
    assert out.splitlines() == ["1000", "/home/app", "hi there", HELLO.decode().strip(), "motd-gone"]


@pytest.mark.tools
def test_layout_export_adds_to_an_existing_layout(built, tmp_path):
    layout = str(tmp_path / "layout")
    other = write_image(built.blobs, built.image.config.with_config(cmd=("/bin/true",)), built.image.layers)
    OCILayoutExporter(layout, names=["docker.io/library/tiny:v1"]).export(built.image, built.blobs)
    OCILayoutExporter(layout, names=["docker.io/library/tiny:v2"]).export(other, built.blobs)
    OCILayoutExporter(layout, names=["docker.io/library/tiny:v1"]).export(built.image, built.blobs)

    assert sorted(_run("umoci", "ls", "--layout", layout).split()) == ["v1", "v2"]
    with open(os.path.join(layout, "index.json")) as f:
        entries = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
                   for m in json.load(f)["manifests"]}
    assert entries == {"v1": built.image.manifest.digest, "v2": other.manifest.digest}

    # Moving a tag replaces its entry; nothing else in the layout changes.
    OCILayoutExporter(layout, names=["docker.io/library/tiny:v1"]).export(other, built.blobs)
    with open(os.path.join(layout, "index.json")) as f:
        manifests = json.load(f)["manifests"]
    assert sorted(m["digest"] for m in manifests) == [other.manifest.digest] * 2
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_layout_export_refuses_to_overwrite_other_directories(built, tmp_path):
    dest = tmp_path / "not-a-layout"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an OCI image layout"):
        OCILayoutExporter(str(dest)).export(built.image, built.blobs)
    assert os.listdir(dest) == ["precious.txt"]


# --- failures leave nothing behind ---


def test_failed_archive_export_leaves_no_partial_file(built, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    top = built.image.layers[-1]
    os.unlink(built.blobs.path(top.digest))
    with pytest.raises(BlobNotFound):
        OCIArchiveExporter(str(out / "image.tar")).export(built.image, built.blobs)
    with pytest.raises(BlobNotFound):
        OCILayoutExporter(str(out / "layout")).export(built.image, built.blobs)
    assert os.listdir(out) == []

    # Same size, different bytes: the store is corrupt, and the export says so instead of shipping it.
    with open(built.blobs.path(top.digest), "wb") as f:
        f.write(b"\0" * top.size)
    with pytest.raises(DigestMismatch):
        DockerArchiveExporter(str(out / "docker.tar")).export(built.image, built.blobs)
    assert os.listdir(out) == []


@pytest.mark.root
def test_export_into_unwritable_directory_fails_cleanly(built, tmp_path):
    out = tmp_path / "readonly"
    out.mkdir()
    # Root ignores permission bits; the immutable attribute stops even root.
    subprocess.run(["chattr", "+i", str(out)], check=True)
    try:
        for exporter in (OCIArchiveExporter(str(out / "image.tar")), DockerArchiveExporter(str(out / "d.tar")),
                         OCILayoutExporter(str(out / "layout"))):
            with pytest.raises(ExportError, match=str(out)):
                exporter.export(built.image, built.blobs)
        assert os.listdir(out) == []
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)


# --- local rootfs ---


@pytest.mark.root
def test_local_export_flattens_the_layers(built, tmp_path):
    pytest.importorskip("builder.snapshot.layers")
    dest = tmp_path / "rootfs-out"
    LocalExporter(str(dest)).export(built.image, built.blobs)
    assert (dest / "hello.txt").read_bytes() == HELLO
    assert os.readlink(dest / "bin/sh") == "/bin/busybox"
    assert os.path.isfile(dest / "bin/busybox") and os.access(dest / "bin/busybox", os.X_OK)
    assert not os.path.lexists(dest / "etc/motd") and not os.path.lexists(dest / "etc/.wh.motd")
    assert os.stat(dest / "home/app").st_uid == 1000
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.root
def test_local_export_merges_into_a_directory_without_following_its_symlinks(built, tmp_path):
    pytest.importorskip("builder.snapshot.layers")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    os.symlink(outside, dest / "etc")  # a trap: merging must not write through it
    LocalExporter(str(dest)).export(built.image, built.blobs)
    assert (dest / "keep.txt").read_text() == "mine"
    assert not os.path.islink(dest / "etc") and (dest / "etc/passwd").is_file()
    assert os.listdir(outside) == []
    assert (dest / "hello.txt").read_bytes() == HELLO
