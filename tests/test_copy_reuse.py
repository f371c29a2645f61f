"""A COPY that misses because some files changed keeps the unchanged files of its last run as hard
links (builder/solver/copyreuse.py), and its layer is byte for byte the layer a fresh copy makes."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay]

DOCKERFILE = """\
FROM scratch
WORKDIR /srv
COPY . /app
COPY --chmod=640 sub/ ./sub-copy/
COPY *.txt /texts/
"""


EPOCH = 1_000_000_000   # 2001


def files() -> dict[str, str]:
    out = {"Dockerfile": DOCKERFILE, "a.txt": "a\n", "b.txt": "b\n", "sub/deep/c.bin": "c" * 5000,
           "sub/deep/d.bin": "d" * 10, "sub/e": "e\n", "empty/.keep": ""}
    out.update({f"many/f{i:03d}": f"file {i}\n" for i in range(60)})
    return out


def build(store: str, context: str, tag: str, *extra: str) -> list[str]:
    """The image's diff IDs. The epoch clamps the layers' mtimes (the WORKDIR layer's new directory
    would differ from store to store); what else makes a layer is compared in full."""
    return build_logged(store, context, tag, *extra)[0]


def build_logged(store: str, context: str, tag: str, *extra: str) -> tuple[list[str], str]:
    """The image's diff IDs and the build's plain progress."""
    progress = build_image("--root", store, "--progress", "plain", "-t", tag,
                           "--build-arg", f"SOURCE_DATE_EPOCH={EPOCH}", *extra, context).stderr
    inspected = build_image("inspect", "--root", store, "--format", "{{json .RootFS.Layers}}", tag)
    return json.loads(inspected.stdout), progress


def snapshot_of(store: str, layers: list[str]) -> str:
    """The committed overlay snapshot of the last of LAYERS (keyed by its chain ID's first 32 hex)."""
    from builder.snapshot.layers import chain_ids

    path = os.path.join(store, "snapshots", chain_ids(layers)[-1].partition(":")[2][:32])
    assert os.path.isdir(path)
    return path


def inode(path: str) -> int:
    return os.lstat(path).st_ino


@pytest.fixture
def context(tmp_path):
    return write_context(tmp_path / "ctx", files())


def test_a_rebuild_after_one_change_links_the_rest_and_equals_a_fresh_copy(tmp_path, store_root, context):
    first = build(store_root, context, "app:1")
    with open(os.path.join(context, "many/f007"), "w") as f:
        f.write("changed\n")
    second, progress = build_logged(store_root, context, "app:2")
    fresh_store = str(tmp_path / "fresh")
    fresh = build(fresh_store, context, "app:fresh")
    assert second == fresh              # every layer as a fresh store makes it, digests and all
    assert second[1:] != first[1:]      # the three COPY layers changed (each reads many/f007 or "." )
    old, new = snapshot_of(store_root, first[:2]), snapshot_of(store_root, second[:2])
    assert inode(f"{new}/app/many/f008") == inode(f"{old}/app/many/f008")      # linked, not copied
    assert inode(f"{new}/app/sub/deep/c.bin") == inode(f"{old}/app/sub/deep/c.bin")
    assert inode(f"{new}/app/many/f007") != inode(f"{old}/app/many/f007")      # copied anew
    with open(f"{new}/app/many/f007") as f:
        assert f.read() == "changed\n"
    total = len(files())   # what "COPY . /app" copies: every file, the Dockerfile and empty/.keep too
    assert f"kept {total - 1} unchanged files of the last run, copied 1" in progress
    # The later COPYs run over another parent now (the layer of COPY . /app changed): no reuse.
    assert progress.count("unchanged files of the last run") == 1


def test_removed_added_and_retimed_files_come_out_as_a_fresh_copy_makes_them(tmp_path, store_root, context):
    first = build(store_root, context, "app:1")
    os.unlink(os.path.join(context, "many/f001"))
    shutil.rmtree(os.path.join(context, "sub/deep"))
    with open(os.path.join(context, "new.txt"), "w") as f:
        f.write("new\n")
    os.utime(os.path.join(context, "many/f002"), (5, 5))   # same content, another mtime
    os.chmod(os.path.join(context, "many/f003"), 0o755)    # another mode
    second = build(store_root, context, "app:2")
    assert second == build(str(tmp_path / "fresh"), context, "app:fresh")
    new = snapshot_of(store_root, second[:2])
    old = snapshot_of(store_root, first[:2])
    assert not os.path.lexists(f"{new}/app/many/f001") and not os.path.lexists(f"{new}/app/sub/deep")
    assert os.lstat(f"{new}/app/many/f002").st_mtime == 5
    assert inode(f"{new}/app/many/f002") != inode(f"{old}/app/many/f002")
    assert os.lstat(f"{new}/app/many/f003").st_mode & 0o777 == 0o755
    assert inode(f"{new}/app/many/f004") == inode(f"{old}/app/many/f004")


def test_no_cache_copies_everything_anew(store_root, context):
    first = build(store_root, context, "app:1")
    with open(os.path.join(context, "a.txt"), "w") as f:
        f.write("A\n")
    second = build(store_root, context, "app:2", "--no-cache")
    old, new = snapshot_of(store_root, first[:2]), snapshot_of(store_root, second[:2])
    assert inode(f"{new}/app/many/f008") != inode(f"{old}/app/many/f008")


def test_a_record_whose_files_the_copy_never_reaches_is_not_committed_with_them(tmp_path, store_root, context):
    """A record that planted a file no source maps to any more (here: edited to claim the removed
    ghost.txt came from a.txt) makes the step run again without reuse, not keep the stray file."""
    with open(os.path.join(context, "ghost.txt"), "w") as f:
        f.write("ghost\n")
    build(store_root, context, "app:1")
    os.unlink(os.path.join(context, "ghost.txt"))
    with open(os.path.join(context, "b.txt"), "w") as f:
        f.write("B\n")
    for path in glob.glob(os.path.join(store_root, "cache", "copies", "*.json")):
        with open(path) as f:
            record = json.load(f)
        if "app/ghost.txt" in record["files"]:
            record["files"]["app/ghost.txt"] = record["files"]["app/a.txt"]
            with open(path, "w") as f:
                json.dump(record, f)
            break
    else:
        raise AssertionError("no record of COPY . /app")
    second, progress = build_logged(store_root, context, "app:2")
    assert "the last run's files do not map onto this one's: copying all anew" in progress
    assert not os.path.lexists(f"{snapshot_of(store_root, second[:2])}/app/ghost.txt")
    assert second == build(str(tmp_path / "fresh"), context, "app:fresh")


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "app/../../x"])
def test_a_record_with_paths_out_of_the_snapshot_is_ignored(tmp_path, store_root, context, name):
    build(store_root, context, "app:1")
    for path in glob.glob(os.path.join(store_root, "cache", "copies", "*.json")):
        with open(path) as f:
            record = json.load(f)
        record["files"][name] = next(iter(record["files"].values()))
        with open(path, "w") as f:
            json.dump(record, f)
    with open(os.path.join(context, "a.txt"), "w") as f:
        f.write("A\n")
    second = build(store_root, context, "app:2")
    assert second == build(str(tmp_path / "fresh"), context, "app:fresh")


def test_a_damaged_record_is_only_a_miss(tmp_path, store_root, context):
    build(store_root, context, "app:1")
    for path in glob.glob(os.path.join(store_root, "cache", "copies", "*.json")):
        with open(path, "w") as f:
            f.write('{"v": 1, "chain": "sha256:')
    with open(os.path.join(context, "a.txt"), "w") as f:
        f.write("A\n")
    assert build(store_root, context, "app:2") == build(str(tmp_path / "fresh"), context, "app:fresh")


def test_prune_with_the_build_cache_removes_the_records(store_root, context):
    build(store_root, context, "app:1")
    assert glob.glob(os.path.join(store_root, "cache", "copies", "*.json"))
    build_image("prune", "--root", store_root, "--cache", "-a", "-f")
    assert not glob.glob(os.path.join(store_root, "cache", "copies", "*.json"))


@pytest.mark.parametrize("copy, kept", [
    ("--chmod=640 --chown=7:8 sub/ /s/", 2),        # sub/deep/c.bin and sub/e
    ("--exclude=*.txt . /x/", None),                # everything but a.txt and b.txt
    ("sub/deep/*.bin /bins/", 1),
    ("--parents sub/./deep/ /p/", 1),
])
def test_copy_forms_keep_what_did_not_change(tmp_path, store_root, context, copy, kept):
    with open(os.path.join(context, "Dockerfile"), "w") as f:
        f.write(f"FROM scratch\nCOPY {copy}\n")
    first = build(store_root, context, "app:1")
    with open(os.path.join(context, "sub/deep/d.bin"), "w") as f:
        f.write("changed")
    second, progress = build_logged(store_root, context, "app:2")
    assert second != first
    assert second == build(str(tmp_path / "fresh"), context, "app:fresh")
    if kept is None:
        kept = len(files()) - 3   # not a.txt, b.txt, nor the changed d.bin
    assert f"kept {kept} unchanged files of the last run, copied 1" in progress


@pytest.mark.parametrize("chain", ["sha256:../../etc", "md5:abc", 7])
def test_a_record_naming_no_chain_id_is_only_a_miss(tmp_path, store_root, context, chain):
    build(store_root, context, "app:1")
    for path in glob.glob(os.path.join(store_root, "cache", "copies", "*.json")):
        with open(path) as f:
            record = json.load(f)
        record["chain"] = chain
        with open(path, "w") as f:
            json.dump(record, f)
    with open(os.path.join(context, "a.txt"), "w") as f:
        f.write("A\n")
    second, progress = build_logged(store_root, context, "app:2")
    assert "unchanged files of the last run" not in progress
    assert second == build(str(tmp_path / "fresh"), context, "app:fresh")
