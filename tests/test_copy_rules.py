"""COPY's path rules, as BuildKit applies them: wildcards, directory contents, trailing slashes,
WORKDIR-relative destinations, links, owners and mtimes, --exclude, --parents, --from."""

from __future__ import annotations

import os

import pytest

from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay]


def build_rootfs(tmp_path, store_root, dockerfile: str, files: dict[str, str] | None = None,
                 *extra: str) -> str:
    """Builds CONTEXT (Dockerfile + files) and returns the exported root filesystem."""
    context = write_context(tmp_path / "ctx", {"Dockerfile": dockerfile, **(files or {})})
    out = str(tmp_path / "out")
    build_image("--root", store_root, *extra, context, "-o", f"type=local,dest={out}")
    return out


def read(root: str, path: str) -> str:
    with open(os.path.join(root, path)) as f:
        return f.read()


def test_wildcards_directories_and_trailing_slashes(tmp_path, store_root):
    out = build_rootfs(tmp_path, store_root, """\
FROM scratch
COPY *.go /gofiles/
COPY f*.go foo2.go
COPY sub/* /subdest/
COPY sub/*/dir2/foo /subdest2/
COPY sub/*/dir2/foo /subdest3/bar
COPY sub/dir1/ subdest4
COPY sub/dir1/. subdest5
COPY sub/dir1 subdest6
COPY foo.go nomatch* /empty-wildcard/
COPY [fb]oo.go /class/
COPY foo.go bar.go /several/
""", {"foo.go": "foo", "bar.go": "bar", "sub/dir1/dir2/foo": "deep"})
    assert sorted(os.listdir(f"{out}/gofiles")) == ["bar.go", "foo.go"]
    assert read(out, "foo2.go") == "foo"
    assert read(out, "subdest/dir2/foo") == "deep"                       # a matched dir copies its contents
    assert read(out, "subdest2/foo") == "deep" and read(out, "subdest3/bar") == "deep"
    for dest in ("subdest4", "subdest5", "subdest6"):                    # dir, dir/ and dir/. alike
        assert os.listdir(f"{out}/{dest}") == ["dir2"]
    assert os.listdir(f"{out}/empty-wildcard") == ["foo.go"]              # an empty wildcard is no error
    assert os.listdir(f"{out}/class") == ["foo.go"]
    assert sorted(os.listdir(f"{out}/several")) == ["bar.go", "foo.go"]


def test_destinations_relative_to_workdir_and_onto_existing_directories(tmp_path, store_root):
    out = build_rootfs(tmp_path, store_root, """\
FROM scratch
WORKDIR /test1
WORKDIR test2
COPY foo ./
ADD foo ./bar/baz
WORKDIR ..
COPY foo ./
WORKDIR /test5/test6
COPY foo ../
COPY foo /test5/test6
WORKDIR /
COPY dir /copied-dir
COPY dir /copied-dir
""", {"foo": "hello", "dir/inner": "x"})
    assert read(out, "test1/test2/foo") == "hello"
    assert read(out, "test1/test2/bar/baz") == "hello"
    assert read(out, "test1/foo") == "hello"
    assert read(out, "test5/foo") == "hello"
    assert read(out, "test5/test6/foo") == "hello"                       # a file onto a directory goes inside
    assert os.listdir(f"{out}/copied-dir") == ["inner"]                  # copying a dir again merges


def test_links_owners_modes_and_mtimes(tmp_path, store_root):
    context = write_context(tmp_path / "ctx", {"Dockerfile": """\
FROM scratch
COPY tree /tree/
COPY link-to-file /followed
""", "tree/file": "data", "tree/sub/script.sh": "#!/bin/sh\n"})
    os.symlink("file", f"{context}/tree/relative-link")
    os.symlink("/etc/passwd", f"{context}/tree/absolute-link")
    os.link(f"{context}/tree/file", f"{context}/tree/hard")
    os.symlink("tree/file", f"{context}/link-to-file")
    os.chmod(f"{context}/tree/sub/script.sh", 0o750)
    os.chown(f"{context}/tree/file", 1234, 5678)
    os.utime(f"{context}/tree/file", (1_000_000_000, 1_000_000_000))
    out = str(tmp_path / "out")
    build_image("--root", store_root, context, "-o", f"type=local,dest={out}")

    assert os.readlink(f"{out}/tree/relative-link") == "file"             # links stay links
    assert os.readlink(f"{out}/tree/absolute-link") == "/etc/passwd"
    assert os.stat(f"{out}/tree/hard").st_ino == os.stat(f"{out}/tree/file").st_ino
    st = os.stat(f"{out}/tree/file")
    assert (st.st_uid, st.st_gid) == (0, 0)                              # the context arrives root-owned
    assert st.st_mtime == 1_000_000_000                                  # mtimes are kept
    assert os.stat(f"{out}/tree/sub/script.sh").st_mode & 0o7777 == 0o750
    assert not os.path.islink(f"{out}/followed") and read(out, "followed") == "data"  # a source link is followed


def test_several_sources_need_a_directory_destination(tmp_path, store_root):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY a b /dest\n", "a": "a", "b": "b"})
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1
    assert "When using COPY with more than one source file, the destination must be a directory and end with a /" \
        in proc.stderr


def test_missing_source_names_the_step(tmp_path, store_root):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY present missing.txt /d/\n",
                                               "present": "x"})
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == 'ERROR: [2/2] COPY present missing.txt /d/: failed to compute cache key: ' \
                   '"/missing.txt": not found'


def test_exclude_patterns_are_relative_to_each_source(tmp_path, store_root):
    files = {"dir1/a.png": "1", "dir1/b.txt": "2", "dir2/c.pdf": "3", "dir2/d.png": "4", "dir3/e.mp3": "5",
             "dir3/keep/f.mp3": "6"}
    out = build_rootfs(tmp_path, store_root, """\
FROM scratch
COPY --exclude=*/*.png --exclude=*.txt . /all/
COPY --exclude=*.mp3 --exclude=!keep/*.mp3 dir* /flat/
""", files)
    assert sorted(os.listdir(f"{out}/all/dir1")) == ["b.txt"]             # *.txt only matches at the top
    assert sorted(os.listdir(f"{out}/all/dir2")) == ["c.pdf"]
    assert sorted(os.listdir(f"{out}/flat")) == ["a.png", "b.txt", "c.pdf", "d.png", "keep"]
    assert os.listdir(f"{out}/flat/keep") == ["f.mp3"]                    # an exception re-includes


def test_parents_keeps_the_path_below_the_pivot(tmp_path, store_root):
    files = {"a/b/c/d/foo": "foo", "a/b/c/d/e/bay": "bay", "a/b2/c/d/e/bar": "bar", "x/y.txt": "y", "x/z.md": "z"}
    out = build_rootfs(tmp_path, store_root, """\
FROM scratch
COPY --parents a/b/c/d/foo /full/
COPY --parents a/b/./c/d /pivot/
COPY --parents a/./*/c /wild/
COPY --parents a/b*/./c/**/e /double/
COPY --parents x/*.txt /ext/
""", files)
    assert read(out, "full/a/b/c/d/foo") == "foo"
    assert read(out, "pivot/c/d/foo") == "foo" and not os.path.exists(f"{out}/pivot/a")
    assert read(out, "wild/b/c/d/e/bay") == "bay" and read(out, "wild/b2/c/d/e/bar") == "bar"
    assert read(out, "double/c/d/e/bay") == "bay" and read(out, "double/c/d/e/bar") == "bar"
    assert os.listdir(f"{out}/ext/x") == ["y.txt"]


@pytest.mark.registry
def test_from_stage_and_image_keep_owners(tmp_path, store_root, busybox_registry):
    out = build_rootfs(tmp_path, store_root, f"""\
FROM {busybox_registry.reference} AS source
RUN mkdir -p /dir/sub && echo hi > /dir/sub/file && chown 100:200 /dir/sub/file && chown 101:201 /dir/sub \\
 && mkdir /existing && chown 500:600 /existing
FROM source AS target
COPY --from=source /dir /copied
COPY --from=source /dir/. /existing
COPY --from=0 --chown=300:400 /dir /chowned
COPY --from={busybox_registry.reference} /bin/busybox /from-image/
""")
    def owner(path: str) -> tuple[int, int]:
        st = os.lstat(f"{out}/{path}")
        return st.st_uid, st.st_gid

    assert owner("copied") == (0, 0)                       # the created destination is root's
    assert owner("copied/sub") == (101, 201) and owner("copied/sub/file") == (100, 200)
    assert owner("existing") == (500, 600)                 # an existing destination is left alone
    assert owner("existing/sub/file") == (100, 200)
    assert owner("chowned") == owner("chowned/sub") == owner("chowned/sub/file") == (300, 400)
    assert os.path.getsize(f"{out}/from-image/busybox") > 100_000
