"""Context checksums kept between builds (builder.context.ChecksumCache): a rebuild reads only the
files whose lstat key changed, and the cache file is a hint that is never trusted beyond that."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from builder.context import BuildContext, ChecksumCache

SMALL_FILES = 600
BIG_FILE = 4 << 20


@pytest.fixture
def tree(tmp_path):
    """600 small files in 6 directories and two 4 MB ones, like the bench's context in miniature."""
    root = tmp_path / "ctx"
    for i in range(SMALL_FILES):
        directory = root / "src" / f"d{i // 100}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:03d}.txt").write_bytes(os.urandom(1024 + i))
    (root / "big").mkdir()
    for i in range(2):
        (root / "big" / f"blob{i}.bin").write_bytes(os.urandom(BIG_FILE))
    return str(root)


def fresh(tree: str, cache_dir, settle_seconds: float = 0.0) -> BuildContext:
    """A new BuildContext (as a new build makes) over TREE with the store's checksum cache."""
    # settle_seconds=0: the test's files were all written a moment ago.
    return BuildContext(tree, checksum_cache=ChecksumCache(str(cache_dir), tree, settle_seconds=settle_seconds))


def test_unchanged_context_is_not_read_again(tree, tmp_path):
    first = fresh(tree, tmp_path / "cache")
    digest = first.checksum((".",))
    assert first.files_hashed == SMALL_FILES + 2 and first.bytes_hashed > 2 * BIG_FILE
    second = fresh(tree, tmp_path / "cache")
    assert second.checksum((".",)) == digest
    assert (second.files_hashed, second.bytes_hashed) == (0, 0)


def test_one_changed_file_is_the_only_one_read(tree, tmp_path):
    before = fresh(tree, tmp_path / "cache").checksum((".",))
    changed = os.path.join(tree, "src", "d3", "f345.txt")
    with open(changed, "wb") as f:
        f.write(b"one small change\n")
    context = fresh(tree, tmp_path / "cache")
    after = context.checksum((".",))
    assert after != before
    assert (context.files_hashed, context.bytes_hashed) == (1, len(b"one small change\n"))
    assert after == BuildContext(tree).checksum((".",))      # what hashing everything gives


def test_same_size_rewrite_with_the_old_mtime_is_still_seen(tree, tmp_path):
    path = os.path.join(tree, "src", "d0", "f000.txt")
    before = fresh(tree, tmp_path / "cache").checksum(("src/d0/f000.txt",))
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"X" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))      # ctime still moves
    context = fresh(tree, tmp_path / "cache")
    assert context.checksum(("src/d0/f000.txt",)) != before and context.files_hashed == 1


def test_a_replaced_file_is_read_again(tree, tmp_path):
    path = os.path.join(tree, "big", "blob0.bin")
    before = fresh(tree, tmp_path / "cache").checksum(("big",))
    os.rename(os.path.join(tree, "big", "blob1.bin"), path)
    context = fresh(tree, tmp_path / "cache")
    assert context.checksum(("big",)) != before
    assert context.files_hashed == 1


def test_recently_changed_files_are_not_recorded(tree, tmp_path):
    young = fresh(tree, tmp_path / "cache", settle_seconds=ChecksumCache.SETTLE_SECONDS)
    young.checksum((".",))
    assert not os.path.exists(young.checksum_cache.path)     # nothing was old enough to record
    again = fresh(tree, tmp_path / "cache", settle_seconds=ChecksumCache.SETTLE_SECONDS)
    again.checksum(("big",))
    assert again.files_hashed == 2


@pytest.mark.parametrize("content", [
    b"\x00\xffnot json",
    b'{"format": 1, "root": "/elsewhere", "entries": {}}',
    b"[1, 2, 3]",
    b'{"format": 99, "entries": {}}',
])
def test_unreadable_cache_files_are_ignored(tree, tmp_path, content):
    cache = ChecksumCache(str(tmp_path / "cache"), tree)
    os.makedirs(os.path.dirname(cache.path))
    with open(cache.path, "wb") as f:
        f.write(content)
    context = fresh(tree, tmp_path / "cache")
    assert context.checksum(("big",)) == BuildContext(tree).checksum(("big",))
    assert context.files_hashed == 2
    with open(cache.path) as f:
        assert json.load(f)["format"] == 1                   # rewritten whole


def test_malformed_entries_are_dropped_and_a_stale_one_is_not_used(tree, tmp_path):
    fresh(tree, tmp_path / "cache").checksum(("big",))
    path = fresh(tree, tmp_path / "cache").checksum_cache.path
    with open(path) as f:
        data = json.load(f)
    entries = data["entries"]
    entries["big/blob0.bin"][6] = "not a digest"
    entries["big/blob1.bin"][2] += 1                         # another size: the file no longer matches
    with open(path, "w") as f:
        json.dump(data, f)
    context = fresh(tree, tmp_path / "cache")
    assert context.checksum(("big",)) == BuildContext(tree).checksum(("big",))
    assert context.files_hashed == 2


def test_entries_of_deleted_files_are_dropped_on_the_next_write(tree, tmp_path):
    fresh(tree, tmp_path / "cache").checksum((".",))
    os.unlink(os.path.join(tree, "big", "blob1.bin"))
    with open(os.path.join(tree, "big", "blob0.bin"), "ab") as f:
        f.write(b"more")
    context = fresh(tree, tmp_path / "cache")
    context.checksum(("big/blob0.bin",))
    with open(context.checksum_cache.path) as f:
        entries = json.load(f)["entries"]
    assert "big/blob1.bin" not in entries and "big/blob0.bin" in entries
    assert len(entries) == SMALL_FILES + 1


def test_concurrent_builds_merge_what_each_hashed(tree, tmp_path):
    halves = [("src/d0", "src/d1", "src/d2"), ("src/d3", "src/d4", "src/d5", "big")]
    barrier = threading.Barrier(2)
    errors = []

    def build(sources):
        try:
            context = fresh(tree, tmp_path / "cache")
            barrier.wait()
            context.checksum(sources)
        except BaseException as error:     # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=build, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    context = fresh(tree, tmp_path / "cache")
    context.checksum((".",))
    assert context.files_hashed == 0


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_builds_keep_the_cache_in_the_store_and_see_changes(tmp_path, store_root, busybox_registry):
    from tests.support.images import build_image, write_context

    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {busybox_registry.reference}\nCOPY . /app\n", "a.txt": "a\n"})
    time.sleep(ChecksumCache.SETTLE_SECONDS + 0.1)     # old enough to be recorded
    build_image("--root", store_root, "-o", f"type=local,dest={tmp_path / 'first'}", context)
    cache = ChecksumCache.in_store(store_root, context)
    with open(cache.path) as f:
        assert set(json.load(f)["entries"]) == {"Dockerfile", "a.txt"}
    with open(os.path.join(context, "a.txt"), "w") as f:
        f.write("b\n")
    build_image("--root", store_root, "-o", f"type=local,dest={tmp_path / 'second'}", context)
    assert (tmp_path / "first" / "app" / "a.txt").read_text() == "a\n"
    assert (tmp_path / "second" / "app" / "a.txt").read_text() == "b\n"
