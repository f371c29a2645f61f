"""Progress views: BuildKit's plain format and the live tty view."""

from __future__ import annotations

import io

from builder.cli.progress_view import PlainProgress, TtyProgress, make_progress
from builder import events as ev


def feed(view):
    view(ev.Started("a", "[stage-0 2/3] RUN make"))
    view(ev.Output("a", b"compiling\nlinking"))
    view(ev.Started("b", "[stage-0 3/3] COPY out /"))
    view(ev.Finished("b", cached=True))
    view(ev.Output("a", b" done\n"))
    view(ev.Finished("a"))


def test_plain_progress_numbers_steps_and_prefixes_output():
    out = io.StringIO()
    feed(PlainProgress(out))
    lines = [line for line in out.getvalue().splitlines() if line]
    assert lines[0] == "#1 [stage-0 2/3] RUN make"
    assert lines[1].startswith("#1 ") and lines[1].endswith(" compiling")
    assert lines[2:4] == ["#2 [stage-0 3/3] COPY out /", "#2 CACHED"]
    assert lines[4].endswith(" linking done") and lines[5].startswith("#1 DONE ")


def test_tty_progress_final_frame_lists_every_step():
    out = io.StringIO()
    view = TtyProgress(out)
    feed(view)
    view.close()
    frame = out.getvalue().rsplit("[+] Building", 1)[1]
    assert "(2/2) FINISHED" in frame
    assert "=> [stage-0 2/3] RUN make" in frame and "=> [stage-0 3/3] COPY out /" in frame
    assert "CACHED" in frame
    assert "compiling" not in frame  # output of finished steps is folded away


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_and_tty_are_plain_when_not_a_terminal():
    # buildx: `--progress tty` with no terminal falls back to plain rather than writing escapes to a log.
    assert isinstance(make_progress("auto", io.StringIO()), PlainProgress)
    assert isinstance(make_progress("tty", io.StringIO()), PlainProgress)
    for mode in ("auto", "tty"):
        view = make_progress(mode, _Terminal())
        assert isinstance(view, TtyProgress)
        view.close()


def test_rawjson_writes_solve_status_lines():
    import base64
    import json

    from builder import events
    from builder.cli.progress_view import RawJsonProgress

    out = io.StringIO()
    view = make_progress("rawjson", out)
    assert isinstance(view, RawJsonProgress)
    step = "sha256:" + "ab" * 32
    view(events.Started(step, "[1/2] RUN make"))
    view(events.Output(step, b"compiling\n"))
    view(events.Finished(step))
    view(events.Started("export", "exporting to image"))
    view(events.Finished("export", cached=True))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 5
    started, log, done, export, export_done = lines
    assert started["vertexes"][0]["digest"] == step and started["vertexes"][0]["name"] == "[1/2] RUN make"
    assert base64.b64decode(log["logs"][0]["data"]) == b"compiling\n" and log["logs"][0]["vertex"] == step
    assert done["vertexes"][0]["completed"].endswith("Z") and "cached" not in done["vertexes"][0]
    assert export["vertexes"][0]["digest"].startswith("sha256:") and export_done["vertexes"][0]["cached"] is True
