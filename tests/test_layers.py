"""Layer diffs: overlay upper dir -> OCI layer blob -> overlay lower dir / flattened root."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile

import pytest

from builder.cache.blobs import BlobStore
from builder.image.media import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from builder.snapshot.layers import (
    Layer, LayerError, apply_layer, chain_ids, unpack_layer, write_layer,
)

IS_ROOT = os.geteuid() == 0


def root_only(test):
    return pytest.mark.root(pytest.mark.skipif(not IS_ROOT, reason="needs root")(test))


MTIME = 1_600_000_000


# -- helpers -------------------------------------------------------------------------------------


def _write(path: str, data: bytes | str = b"", mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def _touch_tree(root: str, mtime: int = MTIME) -> None:
    """Give every entry the same mtime (directories last), so trees can be compared."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))


def make_upper(upper: str) -> str:
    """An upper dir with every kind of entry a RUN step can leave, in overlayfs encoding."""
    os.makedirs(upper)
    _write(f"{upper}/etc/app.conf", "key=value\n")
    os.chown(f"{upper}/etc/app.conf", 1000, 1000)
    _write(f"{upper}/usr/bin/tool", b"\x7fELF" + bytes(5000), 0o4755)
    os.setxattr(f"{upper}/usr/bin/tool", "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    os.setxattr(f"{upper}/usr/bin/tool", "user.note", b"\xffbinary")
    os.setxattr(f"{upper}/usr/bin/tool", "trusted.secret", b"never in a layer")
    os.link(f"{upper}/usr/bin/tool", f"{upper}/usr/bin/tool-alias")
    os.symlink("tool", f"{upper}/usr/bin/tool-link")
    os.makedirs(f"{upper}/tmp")
    os.chmod(f"{upper}/tmp", 0o1777)
    os.makedirs(f"{upper}/dev")
    os.mknod(f"{upper}/dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(f"{upper}/dev/pipe")
    os.chmod(f"{upper}/dev/pipe", 0o620)
    os.mknod(f"{upper}/etc/removed", stat.S_IFCHR | 0o600, 0)  # overlay whiteout
    os.makedirs(f"{upper}/var/cache")
    os.setxattr(f"{upper}/var/cache", "trusted.overlay.opaque", b"y")
    os.setxattr(f"{upper}/var/cache", "trusted.overlay.origin", b"\x00\xfb")
    _write(f"{upper}/var/cache/fresh", "new")
    os.chown(f"{upper}/var/cache", 1000, 100)
    _touch_tree(upper)
    return upper


def members(blobs: BlobStore, layer: Layer) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(uncompressed(blobs, layer)), mode="r:") as tf:
        return tf.getmembers()


def uncompressed(blobs: BlobStore, layer: Layer) -> bytes:
    data = blobs.get_bytes(layer.digest)
    if layer.media_type == OCI_LAYER_GZIP:
        return gzip.decompress(data)
    if layer.media_type == OCI_LAYER_ZSTD:
        return subprocess.run(["zstd", "-d", "-c"], input=data, capture_output=True, check=True).stdout
    return data


def tar_bytes(*entries: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    buf.seek(0)
    return buf


def entry(name: str, type_: bytes = tarfile.REGTYPE, data: bytes = b"", *, linkname: str = "",
          mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = 0o755 if type_ == tarfile.DIRTYPE else mode
    info.mtime = MTIME
    return info, data


def tree(root: str) -> dict[str, str]:
    """Relative path -> short description of every entry under ROOT."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    out[rel] = "file " + f.read().decode(errors="replace")
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                out[rel] = oct(stat.S_IFMT(st.st_mode))
    return out


@pytest.fixture
def blobs(tmp_path) -> BlobStore:
    return BlobStore(str(tmp_path / "blobs"))


# -- chain IDs ---------------------------------------------------------------------------------


def test_chain_ids_follow_the_oci_definition():
    a, b, c = ("sha256:" + ch * 64 for ch in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


# -- write_layer -------------------------------------------------------------------------------


def test_write_layer_rejects_unknown_compression(tmp_path, blobs):
    os.makedirs(tmp_path / "upper")
    with pytest.raises(LayerError, match="unknown layer compression"):
        write_layer(str(tmp_path / "upper"), blobs, compression="lz4")


@pytest.mark.parametrize("compression,media_type", [
    ("gzip", OCI_LAYER_GZIP), ("zstd", OCI_LAYER_ZSTD), ("none", OCI_LAYER),
])
def test_diff_id_is_sha256_of_uncompressed_blob(tmp_path, blobs, compression, media_type):
    upper = tmp_path / "upper"
    _write(f"{upper}/a/b.txt", "hello " * 1000)
    _write(f"{upper}/c.bin", os.urandom(100_000))
    layer = write_layer(str(upper), blobs, compression=compression)
    blob = blobs.get_bytes(layer.digest)
    assert layer.media_type == media_type
    assert layer.size == len(blob) == blobs.size(layer.digest)
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.diff_id == "sha256:" + hashlib.sha256(uncompressed(blobs, layer)).hexdigest()
    if compression == "none":
        assert layer.digest == layer.diff_id
    assert os.listdir(blobs.tmp_dir) == []


def test_gzip_header_carries_no_name_or_time(tmp_path, blobs):
    _write(f"{tmp_path}/upper/f", "x")
    blob = blobs.get_bytes(write_layer(str(tmp_path / "upper"), blobs, compression="gzip").digest)
    assert blob[:3] == b"\x1f\x8b\x08"
    assert blob[3] == 0  # FLG: no FNAME, FCOMMENT or FEXTRA
    assert blob[4:8] == b"\0\0\0\0"  # MTIME


@root_only
def test_write_layer_converts_overlay_encoding_to_oci(tmp_path, blobs):
    upper = make_upper(str(tmp_path / "upper"))
    layer = write_layer(upper, blobs)
    infos = members(blobs, layer)
    names = [i.name for i in infos]
    by_name = {i.name: i for i in infos}

    assert names == [
        "dev", "dev/null", "dev/pipe",
        "etc", "etc/app.conf", "etc/.wh.removed",
        "tmp",
        "usr", "usr/bin", "usr/bin/tool", "usr/bin/tool-alias", "usr/bin/tool-link",
        "var", "var/cache", "var/cache/.wh..wh..opq", "var/cache/fresh",
    ]
    # Sorted pre-order; the opaque marker comes straight after its directory.
    whiteout = by_name["etc/.wh.removed"]
    assert whiteout.isreg() and whiteout.size == 0
    opq = by_name["var/cache/.wh..wh..opq"]
    assert opq.isreg() and (opq.uid, opq.gid) == (1000, 100)

    for info in infos:
        assert info.uname == "" and info.gname == ""
        assert info.mtime == MTIME
        assert not {"atime", "ctime"} & set(info.pax_headers)
        assert not any(k.startswith("SCHILY.xattr.trusted.") for k in info.pax_headers)
    assert (by_name["etc/app.conf"].uid, by_name["etc/app.conf"].gid) == (1000, 1000)
    tool = by_name["usr/bin/tool"]
    assert tool.mode == 0o4755 and tool.size == 5004
    assert tool.pax_headers["SCHILY.xattr.user.note"].encode("utf-8", "surrogateescape") == b"\xffbinary"
    assert "SCHILY.xattr.security.capability" in tool.pax_headers
    assert by_name["usr/bin/tool-alias"].islnk() and by_name["usr/bin/tool-alias"].linkname == "usr/bin/tool"
    assert by_name["usr/bin/tool-link"].issym() and by_name["usr/bin/tool-link"].linkname == "tool"
    assert by_name["tmp"].mode == 0o1777
    null = by_name["dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    assert by_name["dev/pipe"].isfifo() and by_name["dev/pipe"].mode == 0o620
    assert all(i.isdir() for i in infos if i.name in ("dev", "etc", "var/cache"))


@root_only
def test_write_layer_refuses_redirected_dirs(tmp_path, blobs):
    os.makedirs(tmp_path / "upper/moved")
    os.setxattr(tmp_path / "upper/moved", "trusted.overlay.redirect", b"/old")
    with pytest.raises(LayerError, match="redirect_dir=off"):
        write_layer(str(tmp_path / "upper"), blobs)
    assert os.listdir(blobs.tmp_dir) == [] and list(blobs.digests()) == []


def _build_tree(root: str, order: list[str]) -> None:
    os.makedirs(root)
    for name in order:
        _write(os.path.join(root, name), f"content of {name}")
    os.symlink("d/x", os.path.join(root, "link"))
    _touch_tree(root)


def test_same_tree_gives_same_digest(tmp_path, blobs):
    names = ["d/x", "d/y", "a", "b/c/z", "long-" + "n" * 200]
    _build_tree(str(tmp_path / "one"), names)
    _build_tree(str(tmp_path / "two"), list(reversed(names)))
    os.utime(tmp_path / "two/d/x", (12345, MTIME))  # atime differs; mtime does not
    for compression in ("gzip", "zstd"):
        one = write_layer(str(tmp_path / "one"), blobs, compression=compression)
        two = write_layer(str(tmp_path / "two"), blobs, compression=compression)
        assert (one.digest, one.diff_id) == (two.digest, two.diff_id)


def test_source_date_epoch_clamps_newer_mtimes_only(tmp_path, blobs):
    _build_tree(str(tmp_path / "one"), ["f", "g"])
    _build_tree(str(tmp_path / "two"), ["f", "g"])
    _touch_tree(str(tmp_path / "two"), MTIME + 500)
    old = tmp_path / "two/g"
    os.utime(old, (1000, 1000))
    os.utime(tmp_path / "one/g", (1000, 1000))
    epoch = MTIME - 100
    one = write_layer(str(tmp_path / "one"), blobs, source_date_epoch=epoch)
    two = write_layer(str(tmp_path / "two"), blobs, source_date_epoch=epoch)
    assert one.digest == two.digest
    mtimes = {i.name: i.mtime for i in members(blobs, one)}
    assert mtimes["f"] == epoch and mtimes["g"] == 1000
    assert write_layer(str(tmp_path / "two"), blobs).digest != two.digest


# -- unpack_layer and apply_layer ----------------------------------------------------------------


@root_only
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_unpack_layer_restores_overlay_encoding(tmp_path, blobs, compression):
    upper = make_upper(str(tmp_path / "upper"))
    layer = write_layer(upper, blobs, compression=compression)
    lower = tmp_path / "lower"
    lower.mkdir()
    with blobs.open(layer.digest) as f:
        unpack_layer(f, str(lower))

    assert tree(str(lower)) == {k: v for k, v in tree(upper).items()}
    removed = os.lstat(lower / "etc/removed")
    assert stat.S_ISCHR(removed.st_mode) and removed.st_rdev == 0
    assert os.getxattr(lower / "var/cache", "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.origin" not in os.listxattr(lower / "var/cache")
    tool = os.lstat(lower / "usr/bin/tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755
    assert tool.st_ino == os.lstat(lower / "usr/bin/tool-alias").st_ino
    assert os.getxattr(lower / "usr/bin/tool", "user.note") == b"\xffbinary"
    assert os.getxattr(lower / "usr/bin/tool", "security.capability") == os.getxattr(
        f"{upper}/usr/bin/tool", "security.capability")
    assert "trusted.secret" not in os.listxattr(lower / "usr/bin/tool")
    assert (os.lstat(lower / "etc/app.conf").st_uid, os.lstat(lower / "var/cache").st_gid) == (1000, 100)
    assert stat.S_IMODE(os.lstat(lower / "tmp").st_mode) == 0o1777
    assert os.lstat(lower / "dev/null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(lower / "dev/pipe").st_mode)
    for rel in ("etc", "var/cache", "usr/bin/tool", "usr/bin/tool-link"):
        assert os.lstat(lower / rel).st_mtime == MTIME
    # A second write of the unpacked dir gives back the very same layer.
    assert write_layer(str(lower), blobs, compression=compression) == layer


def test_unpack_layer_needs_an_empty_directory(tmp_path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest/old").write_text("x")
    with pytest.raises(LayerError, match="not empty"):
        unpack_layer(tar_bytes(entry("f", data=b"y")), str(tmp_path / "dest"))


@root_only
def test_apply_layer_deletes_whiteouts_and_empties_opaque_dirs(tmp_path, blobs):
    base = tmp_path / "root"
    _write(f"{base}/etc/removed", "old")
    _write(f"{base}/etc/kept", "old")
    _write(f"{base}/var/cache/stale/deep", "old")
    _write(f"{base}/var/cache/fresh", "old version")
    _write(f"{base}/usr/bin/tool", "old tool")
    layer = write_layer(make_upper(str(tmp_path / "upper")), blobs)
    with blobs.open(layer.digest) as f:
        apply_layer(f, str(base))

    got = tree(str(base))
    assert "etc/removed" not in got and got["etc/kept"] == "file old"
    assert {k for k in got if k.startswith("var/cache/")} == {"var/cache/fresh"}
    assert got["var/cache/fresh"] == "file new"
    assert got["usr/bin/tool"].startswith("file \x7fELF")
    assert not any(".wh." in k for k in got)
    assert "trusted.overlay.opaque" not in os.listxattr(base / "var/cache")


def test_apply_layer_keeps_this_layers_entries_whatever_the_marker_order(tmp_path):
    base = tmp_path / "root"
    _write(f"{base}/d/old", "lower")
    _write(f"{base}/d/sub/old", "lower")
    _write(f"{base}/x", "lower")
    layer = tar_bytes(
        entry("d", tarfile.DIRTYPE),
        entry("d/sub", tarfile.DIRTYPE),
        entry("d/sub/new", data=b"mine"),
        entry("d/.wh..wh..opq"),  # after this layer's own files
        entry("x", data=b"mine"),
        entry(".wh.x"),  # a whiteout never hides the same layer's entry
    )
    apply_layer(layer, str(base))
    assert tree(str(base)) == {"d": "dir", "d/sub": "dir", "d/sub/new": "file mine", "x": "file mine"}


def test_apply_layer_replaces_file_with_directory_and_back(tmp_path):
    base = tmp_path / "root"
    _write(f"{base}/a", "file")
    _write(f"{base}/b/inner", "x")
    apply_layer(tar_bytes(entry("a", tarfile.DIRTYPE), entry("a/f", data=b"1"), entry("b", data=b"now a file")),
                str(base))
    assert tree(str(base)) == {"a": "dir", "a/f": "file 1", "b": "file now a file"}


def test_unpack_detects_compression_by_magic(tmp_path):
    plain = tar_bytes(entry("d", tarfile.DIRTYPE), entry("d/f", data=b"payload")).getvalue()
    zst = subprocess.run(["zstd", "-c", "-q"], input=plain, capture_output=True, check=True).stdout
    for name, data in {"plain": plain, "gzip": gzip.compress(plain), "zstd": zst}.items():
        dest = tmp_path / name
        dest.mkdir()
        unpack_layer(io.BytesIO(data), str(dest))
        assert tree(str(dest)) == {"d": "dir", "d/f": "file payload"}, name


def test_truncated_layer_is_refused(tmp_path):
    data = gzip.compress(tar_bytes(entry("f", data=os.urandom(200_000))).getvalue())
    (tmp_path / "dest").mkdir()
    with pytest.raises(LayerError):
        unpack_layer(io.BytesIO(data[: len(data) // 2]), str(tmp_path / "dest"))


# -- hostile archives ----------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path):
    """A directory next to the destination that no layer may touch."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret").write_text("precious")
    return out


def _untouched(outside) -> bool:
    return tree(str(outside)) == {"secret": "file precious"} and os.lstat(outside / "secret").st_nlink == 1


@pytest.fixture(params=["unpack", "apply"])
def extract(request, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()

    def run(*entries):
        stream = tar_bytes(*entries)
        if request.param == "unpack":
            unpack_layer(stream, str(dest))
        else:
            apply_layer(stream, str(dest))
        return dest

    run.mode = request.param
    return run


def test_absolute_names_land_inside_the_root(extract, outside):
    dest = extract(entry(f"{outside}/secret", data=b"pwned"), entry("/abs", data=b"ok"))
    assert _untouched(outside)
    assert (dest / str(outside).lstrip("/") / "secret").read_bytes() == b"pwned"
    assert (dest / "abs").read_bytes() == b"ok"


@pytest.mark.parametrize("name", ["../secret", "a/../../secret", "./../outside/secret"])
def test_dotdot_names_are_refused(extract, outside, name):
    with pytest.raises(LayerError, match=r"\.\."):
        extract(entry(name, data=b"pwned"))
    assert _untouched(outside)


@pytest.mark.parametrize("target", ["ABS", "../outside", "../../../../../../outside", "../.."])
def test_planted_symlink_parents_resolve_inside_the_root(extract, outside, target):
    target = str(outside) if target == "ABS" else target
    dest = extract(entry("a", tarfile.SYMTYPE, linkname=target), entry("a/secret", data=b"pwned"),
                   entry("a/new", data=b"pwned"))
    assert _untouched(outside)
    written = [p for p, v in tree(str(dest)).items() if v == "file pwned"]
    assert len(written) == 2 and all(not p.startswith("..") for p in written)


def test_symlink_chains_stay_inside(extract, outside):
    dest = extract(entry("b", tarfile.SYMTYPE, linkname="../../.."), entry("c", tarfile.SYMTYPE, linkname="b/outside"),
                   entry("c/secret", data=b"pwned"))
    assert _untouched(outside)
    assert (dest / "outside/secret").read_bytes() == b"pwned"


def test_symlink_loops_are_refused(extract):
    with pytest.raises(LayerError, match="symlinks"):
        extract(entry("l1", tarfile.SYMTYPE, linkname="l2"), entry("l2", tarfile.SYMTYPE, linkname="l1"),
                entry("l1/f", data=b"x"))


def test_entry_over_a_planted_symlink_replaces_the_link(extract, outside):
    dest = extract(entry("a", tarfile.SYMTYPE, linkname=str(outside / "secret")), entry("a", data=b"pwned"))
    assert _untouched(outside)
    assert (dest / "a").read_bytes() == b"pwned" and not (dest / "a").is_symlink()


@pytest.mark.parametrize("linkname", ["ABS", "../outside/secret", "s/secret"])
def test_hard_links_must_point_inside(extract, outside, linkname):
    linkname = str(outside / "secret") if linkname == "ABS" else linkname
    with pytest.raises(LayerError):
        extract(entry("s", tarfile.SYMTYPE, linkname=str(outside)), entry("h", tarfile.LNKTYPE, linkname=linkname))
    assert _untouched(outside)


def test_hard_link_to_a_symlink_links_the_symlink_itself(extract, outside):
    dest = extract(entry("s", tarfile.SYMTYPE, linkname=str(outside / "secret")),
                   entry("h", tarfile.LNKTYPE, linkname="s"))
    assert _untouched(outside)
    assert os.readlink(dest / "h") == str(outside / "secret")


@pytest.mark.parametrize("marker", ["a/.wh.secret", "a/.wh..wh..opq"])
def test_whiteouts_under_planted_symlinks_stay_inside(tmp_path, extract, outside, marker):
    if extract.mode == "unpack" and not IS_ROOT:
        pytest.skip("overlay whiteouts and trusted xattrs need root")
    extract(entry("a", tarfile.SYMTYPE, linkname=str(outside)), entry(marker))
    assert _untouched(outside)
    assert "trusted.overlay.opaque" not in os.listxattr(outside)


@pytest.mark.parametrize("marker", [".wh.", ".wh..", ".wh...", "../.wh.secret"])
def test_malformed_whiteouts_are_refused(extract, outside, marker):
    with pytest.raises(LayerError):
        extract(entry(marker))
    assert _untouched(outside)


def test_apply_whiteout_cannot_delete_the_root_or_beyond(tmp_path, outside):
    base = tmp_path / "root"
    _write(f"{base}/keep", "x")
    apply_layer(tar_bytes(entry(".wh.outside"), entry("/.wh.keep-not-there")), str(base))
    assert _untouched(outside) and (base / "keep").exists()
    with pytest.raises(LayerError):
        apply_layer(tar_bytes(entry("/../.wh.outside")), str(base))
    assert _untouched(outside)


@root_only
def test_overlay_xattrs_in_archives_are_dropped(tmp_path):
    info, data = entry("d", tarfile.DIRTYPE)
    info.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc",
                        "SCHILY.xattr.trusted.overlay.opaque": "y",
                        "SCHILY.xattr.user.overlay.origin": "x",
                        "SCHILY.xattr.user.ok": "kept"}
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_layer(tar_bytes((info, data)), str(dest))
    assert os.listxattr(dest / "d") == ["user.ok"]


@root_only
def test_device_nodes_are_skipped_without_root(tmp_path):
    dev, _ = entry("dev/sda", tarfile.BLKTYPE)
    dev.devmajor, dev.devminor = 8, 0
    layer = tar_bytes(entry("dev", tarfile.DIRTYPE), (dev, b""), entry("dev/f", data=b"ok"))
    # pytest's own temp dirs are 0700 root: nobody needs a path it can walk.
    base = tempfile.mkdtemp(prefix="layers-nobody-")
    try:
        os.chmod(base, 0o755)
        dest = os.path.join(base, "dest")
        os.mkdir(dest)
        os.chown(dest, 65534, 65534)
        pid = os.fork()
        if pid == 0:  # child: drop to nobody, apply, report through the exit code
            code = 1
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                apply_layer(layer, dest)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert tree(dest) == {"dev": "dir", "dev/f": "file ok"}
    finally:
        shutil.rmtree(base)


# -- against the real kernel -------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_kernel_overlay_upper_dir_round_trip(tmp_path, blobs):
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    _write(f"{lower}/etc/passwd", "root:x:0:0")
    _write(f"{lower}/etc/hosts", "127.0.0.1")
    _write(f"{lower}/cache/a/old", "old")
    _write(f"{lower}/cache/b", "old")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        os.unlink(merged / "etc/hosts")
        subprocess.run(["rm", "-rf", str(merged / "cache")], check=True)
        _write(f"{merged}/cache/new", "new")
        _write(f"{merged}/etc/passwd", "root:x:0:0\napp:x:1000:1000")
    finally:
        subprocess.run(["umount", str(merged)], check=True)

    layer = write_layer(str(upper), blobs)
    names = [i.name for i in members(blobs, layer)]
    assert names == ["cache", "cache/.wh..wh..opq", "cache/new", "etc", "etc/.wh.hosts", "etc/passwd"]

    flat = tmp_path / "flat"
    subprocess.run(["cp", "-a", f"{lower}/.", str(flat)], check=True)
    with blobs.open(layer.digest) as f:
        apply_layer(f, str(flat))
    assert tree(str(flat)) == {"etc": "dir", "etc/passwd": "file root:x:0:0\napp:x:1000:1000",
                               "cache": "dir", "cache/new": "file new"}


@pytest.mark.root
@pytest.mark.tools
@pytest.mark.skipif(not IS_ROOT or not shutil.which("umoci"), reason="needs root and umoci")
def test_umoci_unpacks_our_layers(tmp_path):
    """umoci, the strictest reader here, checks digests, sizes and diff_ids and applies whiteouts."""
    import json

    from builder.image.media import OCI_CONFIG, OCI_MANIFEST
    from tests.support.rootfs import make_busybox_rootfs

    layout = tmp_path / "layout"
    blobs = BlobStore(str(layout / "blobs"))  # ROOT/sha256/<hex> is the OCI layout's blob tree
    base = make_busybox_rootfs(str(tmp_path / "base"))
    _write(f"{base}/home/app/old", "lower")
    upper = tmp_path / "upper"
    os.makedirs(upper / "etc")
    os.mknod(upper / "etc/group", stat.S_IFCHR | 0o600, 0)
    os.makedirs(upper / "home/app")
    os.setxattr(upper / "home/app", "trusted.overlay.opaque", b"y")
    _write(f"{upper}/home/app/new", "upper")
    layers = [write_layer(base, blobs), write_layer(str(upper), blobs, source_date_epoch=0)]

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": blobs.put_bytes(config), "size": len(config)},
        "layers": [{"mediaType": l.media_type, "digest": l.digest, "size": l.size} for l in layers],
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": blobs.put_bytes(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    os.rmdir(blobs.tmp_dir)

    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], check=True,
                   capture_output=True)
    rootfs = bundle / "rootfs"
    assert (rootfs / "etc/passwd").exists() and not (rootfs / "etc/group").exists()
    assert sorted(os.listdir(rootfs / "home/app")) == ["new"]
    assert os.readlink(rootfs / "bin/sh") == "/bin/busybox"
