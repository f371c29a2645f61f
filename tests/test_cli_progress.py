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


def test_auto_is_plain_when_not_a_terminal():
    assert isinstance(make_progress("auto", io.StringIO()), PlainProgress)
    view = make_progress("tty", io.StringIO())
    assert isinstance(view, TtyProgress)
    view.close()
