"""The build context's .dockerignore rules and the checksums COPY keys on."""

from __future__ import annotations

import os

import pytest

from builder.context import BuildContext, parse_dockerignore, read_dockerignore
from builder.errors import SourceNotFound
from tests.support.images import write_context as make_tree


@pytest.fixture
def tree(tmp_path):
    make_tree(tmp_path, {
        "app.py": "print(1)", "README.md": "doc", "docs/guide.md": "g", "docs/keep.md": "k",
        "src/a.go": "a", "src/sub/b.go": "b", "src/sub/c.txt": "c", "build/out.o": "o",
    })
    return str(tmp_path)


@pytest.mark.parametrize("rules, path, excluded", [
    ("*.md", "README.md", True),
    ("*.md", "docs/guide.md", False),              # * does not cross '/'
    ("**/*.md", "docs/guide.md", True),
    ("**/*.md", "README.md", True),                # ** matches zero directories
    ("build", "build/out.o", True),                # a directory excludes what is below it
    ("docs\n!docs/keep.md", "docs/keep.md", False),
    ("docs\n!docs/keep.md", "docs/guide.md", True),
    ("src/*/*.go", "src/sub/b.go", True),
    ("src/?.go", "src/a.go", True),
    ("src/[ab].go", "src/a.go", True),
    ("src/[^ab].go", "src/a.go", False),
    ("/app.py", "app.py", True),                   # leading slash is the context root
    ("./app.py", "app.py", True),
    ("# comment\n\n", "app.py", False),
    ("build/", "build/out.o", True),               # a trailing '/' is cleaned away
    ("**/out.o", "build/out.o", True),
    ("**/sub", "src/sub/b.go", True),              # '**/' then a directory: everything below it
    ("src/**", "src/sub/b.go", True),              # a trailing '**' takes everything below
    ("src/**", "src", False),
    ("src/**/*.go", "src/a.go", True),
    ("a**b", "a/x/b", True),                       # '**' inside a name is any directories, as moby
    ("a**b", "axb", False),
    ("src/[!a].go", "src/a.go", True),             # Go has no '!' negation in classes: '!' or 'a'
    ("src/[^a].go", "src/a.go", False),
    ("*.md\n!docs/*.md\ndocs/guide.md", "docs/guide.md", True),   # the last matching rule wins
    ("*\n!src", "src/sub/c.txt", False),          # an exception re-includes a whole directory
    ("\ufeffapp.py", "app.py", True),             # a BOM is not part of the first pattern
    (" # not a comment", "# not a comment", True), # only lines starting with '#' are comments
])
def test_exclusion_rules(rules, path, excluded):
    assert BuildContext("/nonexistent", parse_dockerignore(rules)).excluded(path) is excluded


def test_walk_skips_excluded_but_keeps_reincluded(tree):
    context = BuildContext(tree, parse_dockerignore("docs\n!docs/keep.md\n*.md\n"))
    walked = context.walk("")
    assert "docs/keep.md" in walked
    assert "docs/guide.md" not in walked and "README.md" not in walked
    assert "src/sub/b.go" in walked


def test_dockerfile_specific_ignore_file_wins(tree, tmp_path):
    make_tree(tmp_path, {".dockerignore": "*.py\n", "Dockerfile.dockerignore": "src\n"})
    rules = read_dockerignore(tree, os.path.join(tree, "Dockerfile"))
    assert [r.pattern for r in rules] == ["src"]
    assert [r.pattern for r in read_dockerignore(tree)] == ["src"]       # the default Dockerfile's too
    assert [r.pattern for r in read_dockerignore(tree, os.path.join(tree, "Other"))] == ["*.py"]


def test_match_expands_wildcards_and_reports_missing(tree):
    context = BuildContext(tree, parse_dockerignore("src/sub/c.txt"))
    assert context.match("src/*.go") == ["src/a.go"]
    assert context.match("src/sub/*") == ["src/sub/b.go"]
    with pytest.raises(SourceNotFound, match='"/missing.txt": not found'):
        context.match("missing.txt")
    with pytest.raises(SourceNotFound, match="not found"):
        context.match("src/sub/c.txt")           # ignored files do not exist for COPY
    assert context.match("*.rs") == []            # a wildcard may match nothing, as BuildKit
    assert context.match("src/*/*.go") == ["src/sub/b.go"]
    assert context.match("./src/../app.py") == ["app.py"]


def test_excluded_directory_with_wildcard_exception_is_walked(tree):
    context = BuildContext(tree, parse_dockerignore("src\n!src/**/*.go\n"))
    walked = context.walk("")
    assert "src/a.go" in walked and "src/sub/b.go" in walked
    assert "src/sub/c.txt" not in walked
    assert context.match("src/sub/b.go") == ["src/sub/b.go"]
    with pytest.raises(SourceNotFound):
        context.match("src/sub/c.txt")


def test_checksum_follows_content_not_mtime(tree):
    context = BuildContext(tree)
    before = context.checksum(("src",))
    os.utime(os.path.join(tree, "src/a.go"), (1, 1))
    assert BuildContext(tree).checksum(("src",)) == before
    with open(os.path.join(tree, "src/a.go"), "w") as f:
        f.write("changed")
    assert BuildContext(tree).checksum(("src",)) != before
    assert BuildContext(tree).checksum(("app.py",)) == context.checksum(("app.py",))


def test_checksum_sees_mode_changes(tree):
    before = BuildContext(tree).checksum(("app.py",))
    os.chmod(os.path.join(tree, "app.py"), 0o755)
    assert BuildContext(tree).checksum(("app.py",)) != before


@pytest.mark.root
@pytest.mark.overlay
def test_build_honours_dockerignore_and_its_precedence(tmp_path, store_root):
    from tests.support.images import build_image

    context = make_tree(tmp_path / "ctx", {
        "Dockerfile": "FROM scratch\nCOPY . /all/\n",
        ".dockerignore": "*.md\n",
        "Dockerfile.dockerignore": "docs\n!docs/keep.md\nbuild/\n",
        "README.md": "r", "docs/guide.md": "g", "docs/keep.md": "k", "build/out.o": "o", "src/a.go": "a",
    })
    out = str(tmp_path / "out")
    build_image("--root", store_root, context, "-o", f"type=local,dest={out}")
    assert os.path.exists(f"{out}/all/README.md")               # .dockerignore lost to Dockerfile.dockerignore
    assert os.listdir(f"{out}/all/docs") == ["keep.md"]         # re-included inside an excluded directory
    assert not os.path.exists(f"{out}/all/build")
    assert os.path.exists(f"{out}/all/src/a.go")

    with open(f"{context}/Dockerfile", "w") as f:
        f.write("FROM scratch\nCOPY docs/guide.md /\n")
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1 and '"/docs/guide.md": not found' in proc.stderr
