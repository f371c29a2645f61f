"""`save` and `load`: docker and OCI archives read by skopeo, umoci and runc, round trips that keep
every digest, archives from other tools, and broken archives that leave the store as it was."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

import pytest

from tests.support.images import run_oci_archive, skopeo_inspect
from tests.support.rootfs import make_busybox_rootfs
from tests.test_cli_images import cli, import_image

pytestmark = [pytest.mark.root, pytest.mark.tools]  # busybox rootfs owners, runc


@pytest.fixture
def busybox_tar(tmp_path):
    rootfs = make_busybox_rootfs(str(tmp_path / "busybox-rootfs"))
    path = str(tmp_path / "busybox.tar")
    subprocess.run(["tar", "-C", rootfs, "--numeric-owner", "-cf", path, "."], check=True)
    return path


@pytest.fixture
def two_images(store_root, busybox_tar, tmp_path):
    cli(store_root, "import", busybox_tar, "box:1", "-c", 'CMD ["sh", "-c", "echo hello from box"]')
    import_image(store_root, tmp_path, "127.0.0.1:5999/team/tiny:v2", {"etc/tiny": b"tiny\n"})
    return store_root


def store_state(root: str) -> tuple:
    blobs = sorted(os.listdir(os.path.join(root, "blobs", "sha256")))
    scratch = sorted(os.listdir(os.path.join(root, "blobs", "tmp")))
    with open(os.path.join(root, "images", "index.json")) as f:
        index = f.read()
    return blobs, scratch, index


def ids(root: str, *names: str) -> list[tuple[str, str]]:
    docs = json.loads(cli(root, "inspect", *names).stdout)
    return [(d["Id"], d["Manifest"]["Digest"]) for d in docs]


def test_docker_archive_read_by_skopeo(two_images, tmp_path):
    archive = str(tmp_path / "images.tar")
    cli(two_images, "save", "-o", archive, "box:1", "127.0.0.1:5999/team/tiny:v2")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        repositories = json.load(tar.extractfile("repositories"))
    assert sorted(t for entry in manifest for t in entry["RepoTags"]) == ["127.0.0.1:5999/team/tiny:v2", "box:1"]
    assert set(repositories) == {"box", "127.0.0.1:5999/team/tiny"}
    info = skopeo_inspect(f"docker-archive:{archive}:box:1")
    assert len(info["Layers"]) == 1 and info["Os"] == "linux"
    config = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"docker-archive:{archive}:box:1"],
                                       check=True, capture_output=True, text=True).stdout)
    assert config["config"]["Cmd"] == ["sh", "-c", "echo hello from box"]
    # skopeo copies it on into a layout that umoci and runc run
    layout = str(tmp_path / "copied")
    subprocess.run(["skopeo", "copy", f"docker-archive:{archive}:box:1", f"oci:{layout}:box"], check=True,
                   capture_output=True)
    assert os.path.isfile(os.path.join(layout, "index.json"))


def test_oci_archive_runs_under_runc(two_images, tmp_path):
    archive = str(tmp_path / "box.tar")
    cli(two_images, "save", "--format", "oci", "-o", archive, "box:1")
    info = skopeo_inspect(f"oci-archive:{archive}:1")
    assert info["Architecture"] == "amd64"
    assert run_oci_archive(archive, str(tmp_path / "run"), tag="1") == "hello from box\n"


def test_save_load_save_keeps_ids_and_digests(two_images, tmp_path):
    names = ("box:1", "127.0.0.1:5999/team/tiny:v2")
    for fmt in ("docker", "oci"):
        first, second = str(tmp_path / f"first-{fmt}.tar"), str(tmp_path / f"second-{fmt}.tar")
        fresh = str(tmp_path / f"fresh-{fmt}")
        cli(two_images, "save", "--format", fmt, "-o", first, *names)
        out = cli(fresh, "load", "-i", first).stdout
        assert sorted(out.splitlines()) == ["Loaded image: 127.0.0.1:5999/team/tiny:v2", "Loaded image: box:1"]
        if fmt == "oci":
            # The store keeps layers uncompressed and save gzips them, so the loaded manifest is the
            # archive's (gzip layers), not the store's; the image IDs are the same.
            with tarfile.open(first) as tar:
                index = json.load(tar.extractfile("index.json"))
            archived = {e["annotations"]["io.containerd.image.name"]: e["digest"] for e in index["manifests"]}
            assert [d for _, d in ids(fresh, *names)] == [archived[n if "/" in n else f"docker.io/library/{n}"]
                                                          for n in names]
            assert [i for i, _ in ids(fresh, *names)] == [i for i, _ in ids(two_images, *names)]
        else:
            # The docker archive names Docker media types, so the loaded manifest is the Docker-typed
            # one (its digest differs); the image IDs, as docker keeps them, are the same.
            assert [i for i, _ in ids(fresh, *names)] == [i for i, _ in ids(two_images, *names)]
        cli(fresh, "save", "--format", fmt, "-o", second, *names)
        with open(first, "rb") as a, open(second, "rb") as b:
            assert a.read() == b.read()  # byte for byte: the same blobs, names and order


def test_save_by_repository_and_by_id(two_images, tmp_path):
    cli(two_images, "tag", "box:1", "box:2")
    archive = str(tmp_path / "repo.tar")
    cli(two_images, "save", "-o", archive, "box")  # a bare repository means all of its tags
    with tarfile.open(archive) as tar:
        assert json.load(tar.extractfile("manifest.json"))[0]["RepoTags"] == ["box:1", "box:2"]
    [(image_id, _)] = ids(two_images, "box:1")
    cli(two_images, "save", "-o", archive, image_id[7:19])
    with tarfile.open(archive) as tar:
        assert json.load(tar.extractfile("manifest.json"))[0]["RepoTags"] == []
    fresh = str(tmp_path / "fresh")
    assert cli(fresh, "load", "-i", archive).stdout == f"Loaded image ID: {image_id}\n"


def test_load_from_stdin_and_skopeo_docker_archive(two_images, tmp_path):
    """skopeo writes the legacy docker layout (<id>.json, uncompressed <id>.tar layers)."""
    cli(two_images, "save", "--format", "oci", "-o", str(tmp_path / "box.tar"), "box:1")
    legacy = str(tmp_path / "legacy.tar")
    subprocess.run(["skopeo", "copy", f"oci-archive:{tmp_path / 'box.tar'}:1",
                    f"docker-archive:{legacy}:example/box:legacy"], check=True, capture_output=True)
    with tarfile.open(legacy) as tar:
        assert not any(n.startswith("blobs/") for n in tar.getnames())
    fresh = str(tmp_path / "fresh")
    with open(legacy, "rb") as f:
        proc = cli(fresh, "load", stdin=f.read())
    assert proc.stdout.decode() == "Loaded image: example/box:legacy\n"
    [(image_id, _)] = ids(fresh, "example/box:legacy")
    assert image_id == ids(two_images, "box:1")[0][0]  # the config, hence the ID, is unchanged
    archive = str(tmp_path / "again.tar")
    cli(fresh, "save", "--format", "oci", "-o", archive, "example/box:legacy")
    assert run_oci_archive(archive, str(tmp_path / "run"), tag="legacy") == "hello from box\n"


def _rewrite(src: str, dest: str, change) -> None:
    """Copy tar SRC to DEST with CHANGE(name, data) -> data|None (None drops the member)."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for info in tin.getmembers():
            data = tin.extractfile(info).read() if info.isfile() else None
            if data is not None:
                data = change(info.name, data)
                if data is None:
                    continue
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data) if data is not None else None)


def test_broken_archives_leave_the_store_as_it_was(two_images, tmp_path):
    good = str(tmp_path / "good.tar")
    cli(two_images, "save", "-o", good, "box:1")
    with tarfile.open(good) as tar:
        entry = json.load(tar.extractfile("manifest.json"))[0]
    layer, config = entry["Layers"][0], entry["Config"]

    def flip_last_byte(data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1])

    cases = {}
    size = os.path.getsize(good)
    with open(good, "rb") as f:
        data = f.read()
    cases["truncated"] = (data[: size // 2], "truncated")
    cases["garbage"] = (b"this is not a tar file at all\n" * 100, "not a valid image archive")
    cases["empty tar"] = (b"\0" * 10240, "not an image archive")
    for label, change, message in (
        ("wrong digest", lambda n, d: flip_last_byte(d) if n == layer else d, "digest mismatch"),
        ("missing blob", lambda n, d: None if n == layer else d, "is not in the archive"),
        ("missing config", lambda n, d: None if n == config else d, "is not in the archive"),
    ):
        path = str(tmp_path / f"{label}.tar")
        _rewrite(good, path, change)
        with open(path, "rb") as f:
            cases[label] = (f.read(), message)

    fresh = str(tmp_path / "fresh")
    cli(fresh, "load", "-i", good)
    cli(fresh, "rmi", "box:1")  # an empty store with every directory made
    for root in (two_images, fresh):
        before = store_state(root)
        for label, (content, message) in cases.items():
            path = str(tmp_path / "case.tar")
            with open(path, "wb") as f:
                f.write(content)
            proc = cli(root, "load", "-i", path, check=False)
            assert proc.returncode == 1, label
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("ERROR: ") and message in lines[0], (label, lines)
            assert store_state(root) == before, label
    proc = cli(fresh, "load", "-i", str(tmp_path / "no-such.tar"), check=False)
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr


def test_save_of_unknown_image_writes_nothing(two_images, tmp_path):
    dest = str(tmp_path / "out.tar")
    proc = cli(two_images, "save", "-o", dest, "box:1", "nothere:1", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "ERROR: No such image: nothere:1"
    assert os.listdir(tmp_path).count("out.tar") == 0 and not any(n.startswith(".out") for n in os.listdir(tmp_path))
