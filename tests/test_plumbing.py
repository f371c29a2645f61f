"""The leaf modules in builder/plumbing: atomic writes, paths in a root, compressed streams, canonical JSON."""

import gzip
import io
import os
import shutil
import subprocess

import pytest

from builder.plumbing import compression
from builder.plumbing.canonical import canonical_json
from builder.plumbing.files import write_atomically
from builder.plumbing.paths import SymlinkLoop, resolve_in_root


def test_write_atomically_replaces_the_file_with_the_mode_asked(tmp_path):
    target = tmp_path / "index.json"
    target.write_bytes(b"old")
    write_atomically(str(target), b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["index.json"]


def test_write_atomically_takes_a_writer_function(tmp_path):
    target = tmp_path / "out.tar"
    write_atomically(str(target), lambda f: f.write(b"streamed"))
    assert target.read_bytes() == b"streamed"
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_bytes(b"kept")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomically(str(target), fail)
    assert target.read_bytes() == b"kept"
    assert os.listdir(tmp_path) == ["config.json"]


def test_resolve_in_root_never_leaves_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.symlink("/etc", root / "abs")          # absolute: restarts at the root, not the host's /etc
    os.symlink("../../../../etc", root / "up")  # '..' stops at the root
    assert resolve_in_root(str(root), "/abs/passwd") == str(root / "etc" / "passwd")
    assert resolve_in_root(str(root), "up/passwd") == str(root / "etc" / "passwd")
    assert resolve_in_root(str(root), "/abs", follow_last=False) == str(root / "abs")


def test_resolve_in_root_stops_a_symlink_loop(tmp_path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(SymlinkLoop):
        resolve_in_root(str(tmp_path), "a/x")


def test_resolve_in_root_makes_directories_and_refuses_a_file_on_the_way(tmp_path):
    (tmp_path / "file").write_text("")
    made = resolve_in_root(str(tmp_path), "a/b/c", make_dirs=True)
    assert made == str(tmp_path / "a" / "b" / "c") and os.path.isdir(made)
    with pytest.raises(NotADirectoryError):
        resolve_in_root(str(tmp_path), "file/x", make_dirs=True)


def test_sniff_names_each_compression_by_its_magic_number():
    assert compression.sniff(gzip.compress(b"x")) == "gzip"
    assert compression.sniff(b"\x28\xb5\x2f\xfd\x00") == "zstd"
    assert compression.sniff(b"BZh91AY") == "bzip2"
    assert compression.sniff(b"\xfd7zXZ\x00") == "xz"
    assert compression.sniff(b"ustar\x00") == ""


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", ""])
def test_decompressed_reads_a_non_seekable_stream(kind):
    import bz2
    import lzma

    data = os.urandom(1000) * 50
    packed = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress, "": bytes}[kind](data)

    class Pipe(io.RawIOBase):  # no seek, no peek: as a tar member or a socket
        def __init__(self):
            self._inner = io.BytesIO(packed)

        def readable(self):
            return True

        def read(self, n=-1):
            return self._inner.read(n)

    with compression.decompressed(Pipe()) as stream:
        assert stream.read() == data


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
def test_decompressed_zstd_round_trip_and_a_truncated_frame_fails():
    data = b"layer bytes " * 10000
    packed = subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    with compression.decompressed(io.BytesIO(packed)) as stream:
        assert stream.read() == data
    with pytest.raises(compression.CorruptStream):
        with compression.decompressed(io.BytesIO(packed[: len(packed) // 2])) as stream:
            stream.read(100)


def test_canonical_json_sorts_keys_drops_spaces_and_keeps_utf8():
    assert canonical_json({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'.encode()


def test_json_object_says_what_a_document_is_instead():
    from builder.plumbing.canonical import json_object

    assert json_object(b'{"a": 1}') == {"a": 1}
    for data, reason in ((b"{not json", "not JSON"), (b"[1, 2]", "not a JSON object"), (b"\xff", "not JSON")):
        with pytest.raises(ValueError) as caught:
            json_object(data)
        assert str(caught.value) == reason
