"""Every real-world Dockerfile in the shared corpus parses, into at least one build stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import ParseError
from builder.grammar import From, dockerfile_to_json, parse_dockerfile

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "dockerfiles"

# docker/compose keeps this fixture to check that a broken Dockerfile fails the build: BuildKit
# rejects it with exactly this error, and so must we.
EXPECTED_ERRORS = {
    "docker__compose__pkg__e2e__fixtures__wrong-composefile__service1__Dockerfile": (17, "unknown instruction: WRONG"),
}


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.iterdir() if p.is_file() and "Dockerfile" in p.name)


FILES = _corpus_files()


def test_corpus_is_present():
    assert len(FILES) >= 237, f"expected the shared corpus at {CORPUS}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_corpus_file_parses(path: Path):
    text = path.read_text(encoding="utf-8")
    if path.name in EXPECTED_ERRORS:
        line, message = EXPECTED_ERRORS[path.name]
        with pytest.raises(ParseError) as info:
            parse_dockerfile(text, filename=path.name)
        assert (info.value.line, info.value.message) == (line, message)
        return
    df = parse_dockerfile(text, filename=path.name)
    stages = [node for node in df.instructions if isinstance(node, From)]
    assert stages, "no FROM instruction"
    assert all(node.start_line <= node.end_line for node in df.instructions)
    # Line numbers only ever move forward.
    starts = [node.start_line for node in df.instructions]
    assert starts == sorted(starts)
    assert len(dockerfile_to_json(df)) == len(df.instructions)
