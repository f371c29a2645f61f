"""`import` and `export`: a root filesystem tar becomes a one-layer image and comes back out with
the same files; `--change` sets the config; the result runs under runc."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile

import pytest

from tests.support.images import run_oci_archive
from tests.support.rootfs import make_busybox_rootfs
from tests.test_cli_images import cli

pytestmark = [pytest.mark.root, pytest.mark.tools]  # busybox rootfs owners, runc


def tree(path: str) -> dict[str, tuple]:
    """Every entry under PATH: kind, mode, owner, and content or link target."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if os.path.islink(full):
                detail = ("link", os.readlink(full))
            elif os.path.isdir(full):
                detail = ("dir",)
            else:
                with open(full, "rb") as f:
                    detail = ("file", f.read())
            found[os.path.relpath(full, path)] = (*detail, st.st_mode & 0o7777, st.st_uid, st.st_gid)
    return found


@pytest.fixture
def rootfs(tmp_path):
    root = make_busybox_rootfs(str(tmp_path / "rootfs"))
    with open(os.path.join(root, "etc", "motd"), "w") as f:
        f.write("imported\n")
    os.chmod(os.path.join(root, "etc", "motd"), 0o600)
    os.chown(os.path.join(root, "etc", "motd"), 1000, 1000)
    os.link(os.path.join(root, "etc", "motd"), os.path.join(root, "etc", "motd.hard"))
    return root


def test_import_then_export_gives_the_same_files(store_root, rootfs, tmp_path):
    archive = str(tmp_path / "rootfs.tar.gz")
    subprocess.run(["tar", "-C", rootfs, "--numeric-owner", "-czf", archive, "."], check=True)
    image_id = cli(store_root, "import", archive, "imported:1").stdout.strip()
    assert image_id.startswith("sha256:")
    exported = str(tmp_path / "exported.tar")
    cli(store_root, "export", "-o", exported, "imported:1")
    out = str(tmp_path / "out")
    os.mkdir(out)
    subprocess.run(["tar", "-C", out, "--numeric-owner", "-xpf", exported], check=True)
    assert tree(out) == tree(rootfs)
    with tarfile.open(exported) as tar:
        hard = tar.getmember("etc/motd.hard")
    assert hard.islnk() and hard.linkname == "etc/motd"  # hard links stay links


def test_import_from_stdin_with_changes_runs_under_runc(store_root, rootfs, tmp_path):
    data = subprocess.run(["tar", "-C", rootfs, "--numeric-owner", "-cf", "-", "."], check=True,
                          capture_output=True).stdout
    proc = cli(store_root, "import", "-", "app:1", "-c", "ENV GREETING=hi", "-c", "WORKDIR /etc",
               "-c", 'CMD ["sh", "-c", "echo $GREETING; pwd; head -1 passwd"]', "-c", "EXPOSE 80/udp",
               "-m", "from a pipe", stdin=data)
    image_id = proc.stdout.decode().strip()
    [doc] = json.loads(cli(store_root, "inspect", "app:1").stdout)
    assert doc["Id"] == image_id
    assert doc["Config"]["Env"] == ["GREETING=hi"] and doc["Config"]["WorkingDir"] == "/etc"
    assert doc["Config"]["ExposedPorts"] == {"80/udp": {}}
    assert doc["History"][0]["comment"] == "from a pipe"
    archive = str(tmp_path / "app.tar")
    cli(store_root, "save", "--format", "oci", "-o", archive, "app:1")
    assert run_oci_archive(archive, str(tmp_path / "run"), tag="1") == "hi\n/etc\nroot:x:0:0:root:/root:/bin/sh\n"


def test_export_of_a_multi_layer_image_applies_whiteouts(store_root, tmp_path):
    """Two layers written by hand: the second deletes a file of the first."""
    from builder.cache.blobs import sha256_digest
    from builder.image.config import ImageConfig
    from builder.image.manifest import write_image
    from builder.image.media import OCI_LAYER_GZIP, Descriptor
    from builder.store import Store

    def layer(entries: dict[str, bytes]) -> tuple[bytes, str]:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            for name, content in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        return gzip.compress(raw.getvalue(), mtime=0), sha256_digest(raw.getvalue())

    store = Store(store_root)
    descs, diff_ids = [], []
    for entries in ({"a.txt": b"a", "b.txt": b"b"}, {".wh.a.txt": b"", "c.txt": b"c"}):
        blob, diff_id = layer(entries)
        descs.append(Descriptor(OCI_LAYER_GZIP, store.blobs.put_bytes(blob), len(blob)))
        diff_ids.append(diff_id)
    image = write_image(store.blobs, ImageConfig(diff_ids=tuple(diff_ids)), descs)
    store.images.tag("docker.io/library/layered:latest", image.manifest.digest)
    exported = str(tmp_path / "flat.tar")
    cli(store_root, "export", "layered", "-o", exported)
    with tarfile.open(exported) as tar:
        assert sorted(tar.getnames()) == ["b.txt", "c.txt"]


def test_bad_import_input_and_changes(store_root, tmp_path):
    garbage = str(tmp_path / "garbage.tar")
    with open(garbage, "wb") as f:
        f.write(b"definitely not a tar archive" * 50)
    empty = str(tmp_path / "empty.tar")
    open(empty, "wb").close()
    good = str(tmp_path / "good.tar")
    with tarfile.open(good, "w") as tar:
        tar.addfile(tarfile.TarInfo("empty-file"), io.BytesIO(b""))
    for args, message in (
        ([garbage, "x"], "not a tar archive"),
        ([empty, "x"], "empty input"),
        ([str(tmp_path / "missing.tar")], "no such file or directory"),
        ([good, "x", "-c", "RUN echo"], "RUN is not a valid change command"),
        ([good, "x", "-c", "FROBNICATE"], "invalid --change"),
        ([good, "Bad:Name"], "invalid reference format"),
    ):
        proc = cli(store_root, "import", *args, check=False)
        assert proc.returncode == 1, args
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, (args, proc.stderr)
    blobs = os.path.join(store_root, "blobs")
    assert os.listdir(os.path.join(blobs, "sha256")) == [] and os.listdir(os.path.join(blobs, "tmp")) == []
    proc = cli(store_root, "export", "nothere", "-o", str(tmp_path / "x.tar"), check=False)
    assert proc.stderr == "ERROR: No such image: nothere:latest\n" and not os.path.exists(tmp_path / "x.tar")
