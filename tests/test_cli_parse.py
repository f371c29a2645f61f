"""`build-image parse`: instruction nodes as JSON, and parse errors as one line."""

from __future__ import annotations

import json

from tests.support.images import build_image


def test_parse_prints_instructions_with_lines(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM busybox AS base\nRUN echo a \\\n  b\nCMD [\"sh\"]\n")
    nodes = json.loads(build_image("parse", "-f", str(dockerfile)).stdout)
    assert [n["instruction"] for n in nodes] == ["FROM", "RUN", "CMD"]
    assert (nodes[1]["start_line"], nodes[1]["end_line"]) == (2, 3)


def test_parse_error_is_one_line(tmp_path):
    dockerfile = tmp_path / "Dockerfile.bad"
    dockerfile.write_text("FROM busybox\nRUN\n")
    proc = build_image("parse", "-f", str(dockerfile), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("ERROR: Dockerfile.bad:2: ")
    assert len(proc.stderr.strip().splitlines()) == 1
