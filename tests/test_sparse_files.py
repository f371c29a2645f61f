"""Sparse files stay sparse: a 2.5 KiB tar holding a 1 GiB apparent-size sparse member (old GNU or
PAX 1.0) unpacks into holes, not a gigabyte of zeros, through ADD, FROM's unpacking, `export` and
`-o local`/`-o type=tar`; a member claiming more than the file-size bound, or a layer writing more
than the unpack bound, fails with a one-line error."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from builder.image.exporters import write_tree_tar
from builder.snapshot.layers import LayerError, UnpackBudget, apply_layer, check_layer, unpack_layer
from tests.support.images import build_image, write_context
from tests.support.rootfs import make_busybox_rootfs
from tests.support.tar_attacks import old_gnu_sparse_tar, sparse_tar, tar_of
from tests.test_cli_images import cli

GIB = 1 << 30
FEW_BLOCKS = 64 * 2 * 8  # two 64 KiB extents at most, in 512-byte blocks: what real data needs here


def assert_sparse_gib(path: str, head: bytes = b"head", tail: bytes = b"tail") -> None:
    st = os.stat(path)
    assert st.st_size == GIB
    assert st.st_blocks <= FEW_BLOCKS, f"{path}: {st.st_blocks} blocks written for a sparse file"
    with open(path, "rb") as f:
        assert f.read(len(head)) == head
        f.seek(GIB // 2)
        assert f.read(4096) == bytes(4096)
        f.seek(GIB - len(tail))
        assert f.read() == tail


@pytest.mark.parametrize("encoding", ["old-gnu", "gnu-tar", "pax-1.0"])
@pytest.mark.parametrize("unpack", [unpack_layer, apply_layer], ids=["unpack", "apply"])
def test_sparse_members_unpack_into_holes(tmp_path, encoding, unpack):
    layer = {"old-gnu": lambda: old_gnu_sparse_tar(GIB), "gnu-tar": lambda: sparse_tar(GIB, "gnu"),
             "pax-1.0": lambda: sparse_tar(GIB, "posix")}[encoding]()
    dest = tmp_path / "root"
    dest.mkdir()
    if unpack is unpack_layer and os.geteuid() != 0:
        pytest.skip("unpack_layer keeps owners: root only")
    unpack(io.BytesIO(layer), str(dest))
    head, tail = (b"head", b"tail") if encoding == "old-gnu" else (b"head" * 1024, b"tail" * 1024)
    assert_sparse_gib(str(dest / "sparse"), head, tail)
    assert check_layer(io.BytesIO(layer)).startswith("sha256:")


def test_zero_runs_of_a_dense_layer_become_holes(tmp_path):
    """Go's archive/tar (Docker, BuildKit) writes a sparse file out in full: unpacking still
    leaves holes where whole 64 KiB runs are zero, and the bytes read back are the same."""
    data = b"x" * 100 + bytes(4 << 20) + b"y" * 70_000 + bytes(200_000)
    layer = tar_of((_info("dense", len(data)), data))
    apply_layer(io.BytesIO(layer), str(tmp_path))
    st = os.stat(tmp_path / "dense")
    assert st.st_size == len(data) and st.st_blocks * 512 < 1 << 20
    assert (tmp_path / "dense").read_bytes() == data


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info


def test_a_sparse_tree_is_written_as_a_small_tar_that_gnu_tar_restores_sparse(tmp_path):
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    with open(tree / "a" / "sparse", "wb") as f:
        f.write(b"head")
        f.truncate(GIB)
        f.seek(GIB - 4)
        f.write(b"tail")
    out = io.BytesIO()
    write_tree_tar(str(tree), out)
    assert len(out.getvalue()) < 64 << 10
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        member = tar.getmember("a/sparse")
        assert member.size == GIB and member.sparse
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(restored)], input=out.getvalue(), check=True)
    assert_sparse_gib(str(restored / "a" / "sparse"))


def test_the_unpack_bounds_refuse_what_they_should(tmp_path, monkeypatch):
    huge = old_gnu_sparse_tar(1 << 40)
    with pytest.raises(LayerError, match="1 TiB, more than the 64 GiB a file may be"):
        apply_layer(io.BytesIO(huge), str(tmp_path))
    with pytest.raises(LayerError, match="more than the 64 GiB"):
        check_layer(io.BytesIO(huge))
    for name in "abcd":
        (tmp_path / name).mkdir()
    monkeypatch.setenv("BUILD_IMAGE_MAX_FILE_SIZE", "1G")
    apply_layer(io.BytesIO(old_gnu_sparse_tar(GIB)), str(tmp_path / "a"))  # at the bound: fine
    with pytest.raises(LayerError, match="BUILD_IMAGE_MAX_FILE_SIZE"):
        apply_layer(io.BytesIO(old_gnu_sparse_tar(GIB + 512)), str(tmp_path / "b"))
    monkeypatch.setenv("BUILD_IMAGE_MAX_UNPACK_BYTES", "100K")
    files = [(_info(f"f{i}", 30_000), os.urandom(30_000)) for i in range(4)]
    with pytest.raises(LayerError, match="writes more than 100 KiB of data"):
        apply_layer(io.BytesIO(tar_of(*files)), str(tmp_path / "c"))
    apply_layer(io.BytesIO(tar_of(*files[:3])), str(tmp_path / "d"))
    monkeypatch.setenv("BUILD_IMAGE_MAX_UNPACK_BYTES", "lots")
    with pytest.raises(LayerError, match="expected a positive size"):
        UnpackBudget()
    assert UnpackBudget(max_bytes=5).max_bytes == 5


@pytest.mark.root
@pytest.mark.overlay
def test_add_keeps_a_sparse_member_sparse_in_local_and_tar_outputs(tmp_path, store_root):
    small = old_gnu_sparse_tar(GIB)
    assert len(small) == 2560
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nADD sparse.tar /x/\n"})
    (tmp_path / "ctx" / "sparse.tar").write_bytes(small)
    local, rootfs_tar = tmp_path / "out", tmp_path / "rootfs.tar"
    build_image("--root", store_root, context, "-o", f"type=local,dest={local}",
                "-o", f"type=tar,dest={rootfs_tar}")
    assert_sparse_gib(str(local / "x" / "sparse"))
    assert os.path.getsize(rootfs_tar) < 1 << 20
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "-xf", str(rootfs_tar), "-C", str(restored)], check=True)
    assert_sparse_gib(str(restored / "x" / "sparse"))


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.tools
def test_from_an_image_with_a_sparse_file_unpacks_and_exports_it_sparse(tmp_path, store_root):
    rootfs = make_busybox_rootfs(str(tmp_path / "rootfs"))
    with open(os.path.join(rootfs, "sparse"), "wb") as f:
        f.write(b"head")
        f.truncate(GIB)
        f.seek(GIB - 4)
        f.write(b"tail")
    base = tmp_path / "base.tar"
    subprocess.run(["tar", "--sparse", "--numeric-owner", "-C", rootfs, "-cf", str(base), "."], check=True)
    assert os.path.getsize(base) < 8 << 20
    cli(store_root, "import", str(base), "sparsebox:1")
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM sparsebox:1\nRUN stat -c '%s %b' /sparse > /seen\n"})
    local = tmp_path / "out"
    build_image("--root", store_root, context, "-o", f"type=local,dest={local}")
    size, blocks = (local / "seen").read_text().split()
    assert int(size) == GIB and int(blocks) <= FEW_BLOCKS  # as the RUN saw it, on the unpacked lower dir
    assert_sparse_gib(str(local / "sparse"))
    exported = tmp_path / "export.tar"
    cli(store_root, "export", "sparsebox:1", "-o", str(exported))
    assert os.path.getsize(exported) < 8 << 20


@pytest.mark.root
@pytest.mark.overlay
def test_add_of_a_member_beyond_the_bound_fails_in_one_line(tmp_path, store_root):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nADD huge.tar /x/\n"})
    (tmp_path / "ctx" / "huge.tar").write_bytes(old_gnu_sparse_tar(1 << 40))
    proc = build_image("--root", store_root, context, "-o", f"type=local,dest={tmp_path / 'out'}", check=False)
    assert proc.returncode == 1
    error = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(error) == 1 and "more than the 64 GiB a file may be" in error[0], proc.stderr
    assert "Traceback" not in proc.stderr
