"""How each progress view shows a cache-miss reason (events.CacheMiss)."""

from __future__ import annotations

import base64
import io
import json

from builder import events as ev
from builder.cli.progress_view import PlainProgress, RawJsonProgress, TtyProgress

PARENT = "sha256:" + "aa" * 32
CHILD = "sha256:" + "bb" * 32


def feed(view):
    view(ev.Started(PARENT, "[stage-0 2/3] COPY src/ /app/",
                    cache_miss=ev.CacheMiss("COPY src/ /app/", "src/app.py changed (sha256:1a2b3c4d… → "
                                                               "sha256:9f8e7d6c…), 1 of 412 files")))
    view(ev.Finished(PARENT, cache_miss=ev.CacheMiss("COPY src/ /app/", "src/app.py changed (sha256:1a2b3c4d… → "
                                                                        "sha256:9f8e7d6c…), 1 of 412 files")))
    rebuilt = ev.CacheMiss("RUN make", "parent step [stage-0 2/3] COPY src/ /app/ was rebuilt",
                           parent=PARENT, parent_name="[stage-0 2/3] COPY src/ /app/")
    view(ev.Started(CHILD, "[stage-0 3/3] RUN make", inputs=(PARENT,), cache_miss=rebuilt))
    view(ev.Output(CHILD, b"compiling\n"))
    view(ev.Finished(CHILD, cache_miss=rebuilt))
    base = ev.CacheMiss("FROM debian:bookworm", "base image digest changed (sha256:11111111… → sha256:22222222…)")
    view(ev.Started("from", "[stage-0 1/3] FROM debian:bookworm"))   # a base image: known when it ends
    view(ev.Finished("from", cache_miss=base))


def test_plain_prints_one_line_per_miss_and_numbers_the_parent():
    out = io.StringIO()
    feed(PlainProgress(out))
    lines = [line for line in out.getvalue().splitlines() if "cache miss" in line]
    assert lines == [
        "#1 cache miss: COPY src/ /app/: src/app.py changed (sha256:1a2b3c4d… → sha256:9f8e7d6c…), 1 of 412 files",
        "#2 cache miss: RUN make: parent step #1 was rebuilt",
        "#3 cache miss: FROM debian:bookworm: base image digest changed (sha256:11111111… → sha256:22222222…)",
    ]
    text = out.getvalue()
    # Right after the step's name when known at its start; before its DONE otherwise.
    assert "#2 [stage-0 3/3] RUN make\n#2 cache miss:" in text
    assert "#3 cache miss: FROM debian:bookworm: base image digest changed (sha256:11111111… → " \
           "sha256:22222222…)\n#3 DONE" in text


def test_tty_final_frame_keeps_the_reasons():
    out = io.StringIO()
    view = TtyProgress(out)
    feed(view)
    view.close()
    frame = out.getvalue().rsplit("[+] Building", 1)[1]
    # Under the step's own row, so without repeating the step.
    assert " => [stage-0 3/3] RUN make" in frame and " => => cache miss: parent step #1 was rebuilt\n" in frame
    assert " => => cache miss: src/app.py changed (sha256:1a2b3c4d… → " in frame   # cut to the width
    assert " => => cache miss: base image digest changed" in frame


def test_rawjson_has_the_reason_as_a_log_line_and_the_inputs():
    out = io.StringIO()
    feed(RawJsonProgress(out))
    statuses = [json.loads(line) for line in out.getvalue().splitlines()]
    logs = [(log["vertex"], base64.b64decode(log["data"]).decode()) for s in statuses for log in s.get("logs", [])]
    misses = [(vertex, text) for vertex, text in logs if text.startswith("cache miss: ")]
    assert [text for _, text in misses] == [
        "cache miss: COPY src/ /app/: src/app.py changed (sha256:1a2b3c4d… → sha256:9f8e7d6c…), 1 of 412 files\n",
        "cache miss: RUN make: parent step [stage-0 2/3] COPY src/ /app/ was rebuilt\n",
        "cache miss: FROM debian:bookworm: base image digest changed (sha256:11111111… → sha256:22222222…)\n",
    ]
    assert misses[1][0] == CHILD   # one line, on the step's own vertex
    child = next(v for s in statuses for v in s.get("vertexes", []) if v["digest"] == CHILD and "completed" not in v)
    assert child["inputs"] == [PARENT]
