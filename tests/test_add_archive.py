"""ADD of a local tar archive: unpacked (plain, gzip, bzip2, xz, zstd) with the archive's modes,
owners and mtimes; COPY and --unpack=false copy it as a file; hostile entries never land
outside the destination."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay]


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, mtime=1_500_000_000, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime, info.linkname = kind, mode, uid, gid, mtime, linkname
    return info


SAMPLE = make_tar([
    (entry("etc/dnf/dnf.conf", uid=12, gid=34, mode=0o640), b"conf\n"),   # no entry for its parents
    (entry("bin/", tarfile.DIRTYPE, mode=0o711, mtime=1_400_000_000), None),
    (entry("bin/tool", mode=0o4755), b"#!/bin/sh\n"),
    (entry("bin/tool-link", tarfile.SYMTYPE, linkname="tool", mode=0o777), None),
    (entry("bin/tool-hard", tarfile.LNKTYPE, linkname="bin/tool"), None),
])


def compress(data: bytes, tool: str) -> bytes:
    if tool == "plain":
        return data
    return subprocess.run([tool, "-c"], input=data, capture_output=True, check=True).stdout


def build(tmp_path, store_root, dockerfile: str, files: dict[str, bytes]) -> str:
    context = write_context(tmp_path / "ctx", {"Dockerfile": dockerfile})
    for name, data in files.items():
        with open(os.path.join(context, name), "wb") as f:
            f.write(data)
    out = str(tmp_path / "out")
    build_image("--root", store_root, context, "-o", f"type=local,dest={out}")
    return out


@pytest.mark.parametrize("tool", ["plain", "gzip", "bzip2", "xz", "zstd"])
def test_add_unpacks_local_archives(tmp_path, store_root, tool):
    out = build(tmp_path, store_root, "FROM scratch\nADD sample.tar /x\n", {"sample.tar": compress(SAMPLE, tool)})
    st = os.stat(f"{out}/x/etc/dnf/dnf.conf")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_mtime) == (12, 34, 0o640, 1_500_000_000)
    assert os.stat(f"{out}/x/etc").st_mode & 0o7777 == 0o755            # implied parents
    assert os.stat(f"{out}/x/bin").st_mode & 0o7777 == 0o711
    assert os.stat(f"{out}/x/bin").st_mtime == 1_400_000_000            # dir mtimes survive their files
    assert os.stat(f"{out}/x/bin/tool").st_mode & 0o7777 == 0o4755
    assert os.readlink(f"{out}/x/bin/tool-link") == "tool"
    assert os.stat(f"{out}/x/bin/tool-hard").st_ino == os.stat(f"{out}/x/bin/tool").st_ino


def test_copy_and_unpack_false_keep_the_archive(tmp_path, store_root):
    packed = compress(SAMPLE, "gzip")
    out = build(tmp_path, store_root, """\
FROM scratch
COPY s.tar.gz /copy/
ADD --unpack=false s.tar.gz /add/
ADD --chown=100:200 s.tar.gz /owned/
ADD empty.tar not-a-tar.tar.gz /files/
""", {"s.tar.gz": packed, "empty.tar": b"\0" * 1024, "not-a-tar.tar.gz": b"\x1f\x8b\x08garbage"})
    with open(f"{out}/copy/s.tar.gz", "rb") as f:
        assert f.read() == packed
    assert os.path.isfile(f"{out}/add/s.tar.gz")
    for path in ("owned", "owned/etc/dnf/dnf.conf", "owned/bin/tool"):
        st = os.lstat(f"{out}/{path}")
        assert (st.st_uid, st.st_gid) == (100, 200)
    assert sorted(os.listdir(f"{out}/files")) == ["empty.tar", "not-a-tar.tar.gz"]


def test_archive_symlinks_resolve_inside_the_destination(tmp_path, store_root):
    rootfs = make_tar([(entry("run/", tarfile.DIRTYPE, mode=0o755), None),
                       (entry("var/", tarfile.DIRTYPE, mode=0o755), None),
                       (entry("var/run", tarfile.SYMTYPE, linkname="/run"), None)])
    payload = make_tar([(entry("var/run/act/HEAD"), b"ref\n"),
                        (entry("var/run/act/HEAD.link", tarfile.LNKTYPE, linkname="var/run/act/HEAD"), None)])
    out = build(tmp_path, store_root, "FROM scratch\nADD rootfs.tar /\nADD payload.tar /\n",
                {"rootfs.tar": rootfs, "payload.tar": payload})
    with open(f"{out}/run/act/HEAD") as f:
        assert f.read() == "ref\n"
    assert os.stat(f"{out}/run/act/HEAD.link").st_ino == os.stat(f"{out}/run/act/HEAD").st_ino


@pytest.mark.parametrize("entries, error", [
    ([(entry("../escape"), b"x")], "is outside of the ADD destination"),
    ([(entry("a/../../escape"), b"x")], "is outside of the ADD destination"),
    ([(entry("up", tarfile.SYMTYPE, linkname="../../.."), None)], "invalid symlink"),
    ([(entry("hard", tarfile.LNKTYPE, linkname="../outside"), None)], "invalid hardlink"),
])
def test_hostile_archives_are_refused(tmp_path, store_root, entries, error):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nADD evil.tar /dest/\n"})
    with open(f"{context}/evil.tar", "wb") as f:
        f.write(make_tar(entries))
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1 and error in proc.stderr
    assert not os.path.exists(tmp_path / "escape") and not os.path.exists(tmp_path / "outside")


def test_absolute_names_and_links_stay_inside(tmp_path, store_root):
    evil = make_tar([
        (entry("/abs.txt"), b"abs\n"),                                  # "/abs.txt" is DEST/abs.txt
        (entry("etc-link", tarfile.SYMTYPE, linkname="/etc"), None),    # DEST/etc, not the host's /etc
        (entry("etc-link/written-through"), b"inside\n"),
        (entry("root-link", tarfile.SYMTYPE, linkname="/"), None),
        (entry("root-link/climbed"), b"inside too\n"),
    ])
    out = build(tmp_path, store_root, "FROM scratch\nADD evil.tar /dest/\n", {"evil.tar": evil})
    assert sorted(os.listdir(f"{out}/dest")) == ["abs.txt", "climbed", "etc", "etc-link", "root-link"]
    with open(f"{out}/dest/etc/written-through") as f:
        assert f.read() == "inside\n"
    assert not os.path.exists("/etc/written-through") and not os.path.exists("/climbed")
