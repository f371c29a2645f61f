"""Fuzzing the parser: mutants of the shared corpus of real Dockerfiles, as bytes, through what
reading a Dockerfile does (UTF-8 decoding, parsing, the JSON form). Every mutant either parses
or raises the project's own error (a BuildError); anything else is a bug.

Seeded and reproducible: mutant I of seed S is made from `random.Random(f"{S}:{I}")` alone, so a
failure names the one mutant to look at (`python -m tests.test_parse_fuzz S I` prints it).
BUILD_IMAGE_FUZZ_SEED and BUILD_IMAGE_FUZZ_COUNT change the run (default: a fixed seed, 20,000).
Two processes share the work; the run's figure is "mutants fuzzed: N".
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sys

from builder.context import utf8_text
from builder.errors import BuildError
from builder.grammar import dockerfile_to_json, parse_dockerfile
from tests.test_parse_corpus import FILES

SEED = int(os.environ.get("BUILD_IMAGE_FUZZ_SEED", "20261201"))
COUNT = int(os.environ.get("BUILD_IMAGE_FUZZ_COUNT", "20000"))
PROCESSES = 2

# Bytes that have broken parsers before: form feed, NEL and U+2028 before `[` (JSON forms), line
# continuations, quotes, heredoc and variable syntax, NUL, CR, and bytes that are no UTF-8.
_INTERESTING = [b"\f", b"\x85", "\u2028".encode(), "\u00a0".encode(), b"[", b"]", b'"', b"'", b"\\", b"\\\n",
                b"`", b"$", b"${", b"}", b":-", b"<<", b"<<-EOF\n", b"EOF", b"=", b"--", b"--mount=", b"\x00",
                b"\r", b"\r\n", b"\t", b" ", b"\n", b"#", b"# escape=`\n", b"# syntax=x\n", b"\xff", b"\xc3",
                b"\xe2\x80", b"\xed\xa0\x80", b"{", b",", b"/", b"..", b"*", b"ONBUILD ", b"FROM ", b"AS ",
                b'["', b'"]', b"9" * 30, b"-1"]
_KEYWORDS = [b"FROM", b"RUN", b"CMD", b"ENTRYPOINT", b"SHELL", b"VOLUME", b"COPY", b"ADD", b"ENV", b"ARG",
             b"LABEL", b"EXPOSE", b"USER", b"WORKDIR", b"ONBUILD", b"HEALTHCHECK", b"STOPSIGNAL", b"MAINTAINER"]


def _corpus() -> list[bytes]:
    return [path.read_bytes() for path in FILES]


def mutant(corpus: list[bytes], seed: int, index: int) -> bytes:
    rng = random.Random(f"{seed}:{index}")
    lines = rng.choice(corpus).splitlines(keepends=True)
    if rng.random() < 0.8:  # a window of a few lines (fast to parse), mostly after a FROM
        start = rng.randrange(len(lines))
        lines = lines[start:start + rng.randint(1, 8)]
        if rng.random() < 0.7:
            lines.insert(0, b"FROM base AS stage\n")
    data = bytearray(b"".join(lines))
    for _ in range(rng.randint(1, 4)):
        _mutate(rng, data, corpus)
    return bytes(data)


def _mutate(rng: random.Random, data: bytearray, corpus: list[bytes]) -> None:
    at = rng.randint(0, len(data))
    kind = rng.randrange(7)
    if kind == 0:
        data[at:at] = rng.choice(_INTERESTING)
    elif kind == 1:
        del data[at:at + rng.randint(1, 16)]
    elif kind == 2 and data:
        data[min(at, len(data) - 1)] = rng.randrange(256)
    elif kind == 3:
        data[at:at] = rng.choice(_KEYWORDS) + b" " + rng.choice(_INTERESTING) + b"\n"
    elif kind == 4:  # a line of another file
        other = rng.choice(corpus).splitlines(keepends=True)
        data[at:at] = rng.choice(other)
    elif kind == 5:
        del data[at:]
    else:  # repeat a stretch
        end = min(len(data), at + rng.randint(1, 64))
        data[at:at] = data[at:end] * rng.randint(1, 3)


def _check(data: bytes) -> str | None:
    """None when DATA parses or fails with a BuildError; else the stray exception, one line."""
    try:
        dockerfile_to_json(parse_dockerfile(utf8_text(data, "Dockerfile"), "Dockerfile"))
    except BuildError:
        pass
    except Exception as e:  # noqa: BLE001 - finding these is the point
        return f"{type(e).__name__}: {e}"
    return None


def _run_share(args: tuple[int, int, int]) -> tuple[int, list[tuple[int, str]]]:
    seed, first, stop = args
    corpus = _corpus()
    failures = []
    for index in range(first, stop):
        problem = _check(mutant(corpus, seed, index))
        if problem is not None:
            failures.append((index, problem))
    return stop - first, failures


def test_every_mutant_parses_or_gives_a_build_error(record_property):
    assert FILES, "the shared corpus is missing"
    bounds = [COUNT * i // PROCESSES for i in range(PROCESSES + 1)]
    shares = [(SEED, bounds[i], bounds[i + 1]) for i in range(PROCESSES)]
    with multiprocessing.get_context("fork").Pool(PROCESSES) as pool:
        results = pool.map(_run_share, shares)
    fuzzed = sum(count for count, _ in results)
    failures = [failure for _, found in results for failure in found]
    figure = f"mutants fuzzed: {fuzzed} (seed {SEED}), {fuzzed - len(failures)} gave a proper result"
    record_property("figure", figure)
    print(figure)
    assert fuzzed == COUNT >= 20_000 or "BUILD_IMAGE_FUZZ_COUNT" in os.environ
    assert not failures, "\n".join(f"mutant {SEED} {i}: {problem}" for i, problem in failures[:20])


def test_mutants_are_reproducible():
    corpus = _corpus()
    assert [mutant(corpus, SEED, i) for i in (0, 7, 19_999)] == [mutant(corpus, SEED, i) for i in (0, 7, 19_999)]
    assert mutant(corpus, SEED, 1) != mutant(corpus, SEED + 1, 1)


if __name__ == "__main__":  # print one mutant: python -m tests.test_parse_fuzz SEED INDEX
    sys.stdout.buffer.write(mutant(_corpus(), int(sys.argv[1]), int(sys.argv[2])))
