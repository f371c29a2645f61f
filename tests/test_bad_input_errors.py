"""Inputs that used to end in a traceback (issue 10 §5) give one error line with file and line."""

from __future__ import annotations

import os

import pytest

from builder.grammar import parse_dockerfile
from tests.support.images import build_image


@pytest.mark.parametrize("instruction", ["CMD", "ENTRYPOINT", "RUN", "SHELL", "VOLUME"])
@pytest.mark.parametrize("space", ["\f", "\x85", "\u2028"])
def test_odd_whitespace_before_a_json_array_is_the_exec_form(instruction, space):
    node = parse_dockerfile(f"FROM scratch\n{instruction}{space}[\"x\"]\n", "Dockerfile").instructions[-1]
    command = getattr(node, "command", None)
    assert (command.args if command is not None else getattr(node, "args", None) or node.paths) == ("x",)


def test_an_invalid_json_array_after_odd_whitespace_is_the_shell_form():
    node = parse_dockerfile('FROM scratch\nCMD\f["x",]\n', "Dockerfile").instructions[-1]
    assert type(node.command).__name__ == "ShellCommand"


def _context(tmp_path, dockerfile: bytes, extra: dict[str, bytes] | None = None) -> str:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_bytes(dockerfile)
    for name, data in (extra or {}).items():
        (context / name).write_bytes(data)
    return str(context)


def test_a_dockerfile_that_is_not_utf8_names_line_and_byte(tmp_path, store_root):
    context = _context(tmp_path, b"FROM scratch\nCOPY a\xff /b\n")
    result = build_image("--root", store_root, context, check=False)
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (
        1, "ERROR: Dockerfile:2: invalid UTF-8 at byte 7 of the line (byte 0xff)")


def test_a_dockerignore_that_is_not_utf8_names_line_and_byte(tmp_path, store_root):
    context = _context(tmp_path, b"FROM scratch\n", {".dockerignore": b"x\n\xfe\n"})
    result = build_image("--root", store_root, context, check=False)
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (
        1, "ERROR: .dockerignore:2: invalid UTF-8 at byte 1 of the line (byte 0xfe)")


def test_a_wildcard_matching_a_dangling_symlink_is_not_found(tmp_path, store_root):
    context = _context(tmp_path, b"FROM scratch\nCOPY dang* /w/\n")
    os.symlink("/nonexistent", os.path.join(context, "dangling"))
    result = build_image("--root", store_root, "--progress", "plain", context, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        'ERROR: [2/2] COPY dang* /w/: failed to compute cache key: "/dangling": not found')


def test_parse_command_names_line_and_byte_of_invalid_utf8(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_bytes(b"FROM scratch\nLABEL a=\xff\n")
    result = build_image("parse", "-f", str(path), check=False)
    assert (result.returncode, result.stderr.strip()) == (
        1, "ERROR: Dockerfile:2: invalid UTF-8 at byte 9 of the line (byte 0xff)")
