"""The parser tables kept in the user's cache give the same parser as building them afresh."""

from __future__ import annotations

import os

from builder.grammar import syntax


def test_cached_tables_parse_like_fresh_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    syntax._parser.cache_clear()
    fresh = syntax._parser("\\")                       # builds the tables and stores them
    stored = os.listdir(syntax.tables_dir())
    assert len(stored) == 1 and stored[0].endswith(".json")
    syntax._parser.cache_clear()
    loaded = syntax._parser("\\")                      # loads them
    assert loaded is not fresh
    lines = ['RUN --mount=type=cache,target=/root/.cache pip install -r req.txt',
             'COPY --from=build --chown=app:app /out /app/', 'CMD ["sh", "-c", "echo hi"]',
             'HEALTHCHECK --interval=5s CMD true', 'ENV A="x y" B=z', 'ONBUILD RUN make']
    for line in lines:
        assert loaded.parse(line) == fresh.parse(line)
    syntax._parser.cache_clear()


def test_damaged_tables_are_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    syntax._parser.cache_clear()
    syntax._parser("\\")
    (path,) = [os.path.join(syntax.tables_dir(), n) for n in os.listdir(syntax.tables_dir())]
    with open(path, "w") as f:
        f.write('{"d": [["data", {"oops": 1}]]}')
    syntax._parser.cache_clear()
    assert syntax._parser("\\").parse("RUN true") is not None
    syntax._parser.cache_clear()
    assert syntax._load_tables(path) is not None         # overwritten with good tables
    syntax._parser.cache_clear()
