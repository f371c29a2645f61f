"""The build context's .dockerignore rules and the checksums COPY keys on."""

from __future__ import annotations

import os

import pytest

from builder.context import BuildContext, parse_dockerignore, read_dockerignore
from builder.errors import SourceNotFound


def make_tree(root, files: dict[str, str]) -> None:
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)


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
    assert [r.pattern for r in read_dockerignore(tree)] == ["*.py"]


def test_match_expands_wildcards_and_reports_missing(tree):
    context = BuildContext(tree, parse_dockerignore("src/sub/c.txt"))
    assert context.match("src/*.go") == ["src/a.go"]
    assert context.match("src/sub/*") == ["src/sub/b.go"]
    with pytest.raises(SourceNotFound, match='"/missing.txt": not found'):
        context.match("missing.txt")
    with pytest.raises(SourceNotFound, match="not found"):
        context.match("src/sub/c.txt")           # ignored files do not exist for COPY
    with pytest.raises(SourceNotFound, match="no source files"):
        context.match("*.rs")


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
