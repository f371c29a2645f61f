"""--timeline FILE.html and --trace FILE.json: the build as a picture, and the same as Chrome
trace events; the page rendered by Debian's headless Chromium."""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time

import pytest

from builder import events as ev
from builder.timeline import TimelineRecorder, chrome_trace, render_html
from tests.support import timeline_shot
from tests.support.images import build_image, write_context

def _step(recorder, step_id, name, seconds, inputs=(), cached=False, error=None, thread="solve_0"):
    def run():
        miss = None if cached else ev.CacheMiss(name, "no previous build of this step")
        recorder(ev.Started(step_id, name, tuple(inputs), miss))
        time.sleep(seconds)
        recorder(ev.Finished(step_id, cached=cached, error=error, cache_miss=miss))

    worker = threading.Thread(target=run, name=thread)
    worker.start()
    return worker


def _diamond():
    """load, then a (0.25 s) beside b (0.05 s, cached), then c reading both, then export."""
    seen = []
    recorder = TimelineRecorder(seen.append)
    recorder(ev.Started("load", "[internal] load build definition from Dockerfile"))
    recorder(ev.Finished("load"))
    a = _step(recorder, "a", "[a 2/2] RUN slow", 0.25, thread="solve_0")
    b = _step(recorder, "b", "[b 2/2] RUN quick", 0.05, cached=True, thread="solve_1")
    a.join(), b.join()
    _step(recorder, "c", "[c 2/2] COPY --from=a --from=b", 0.05, inputs=("a", "b"), error="exit code: 1").join()
    recorder(ev.Started("export", "exporting to image"))
    recorder(ev.Finished("export"))
    return recorder, seen


def test_recorder_passes_events_on_and_finds_the_critical_path():
    recorder, seen = _diamond()
    assert len(seen) == 10   # every event reached the progress view it wraps
    timeline = recorder.timeline()
    assert [s.id for s in timeline.critical] == ["load", "a", "c", "export"]
    assert timeline.lanes == ["main", "worker 1", "worker 2"]
    states = {s.id: s.state for s in timeline.spans}
    assert states == {"load": "ran", "a": "ran", "b": "cached", "c": "failed", "export": "ran"}
    durations = sum(s.duration for s in timeline.spans)
    assert timeline.parallelism == pytest.approx(durations / timeline.total)
    assert timeline.critical_time == pytest.approx(sum(s.duration for s in timeline.critical))
    assert 0.3 <= timeline.critical_time <= timeline.total


def test_html_is_self_contained_with_one_bar_per_step():
    recorder, _ = _diamond()
    page = render_html(recorder.timeline())
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    assert re.findall(r"https?://[^\"]+", page) == ["http://www.w3.org/2000/svg"]   # a namespace, never fetched
    bars = re.findall(r'<g class="bar (\w+)( critical)?" data-step="(\d+)"', page)
    assert [(state, step) for state, _, step in bars] == [("ran", "1"), ("ran", "2"), ("cached", "3"),
                                                           ("failed", "4"), ("ran", "5")]
    assert [step for _, critical, step in bars if critical] == ["1", "2", "4", "5"]
    tip = re.search(r'data-step="4" data-state="failed"><title>(.*?)</title>', page, re.DOTALL).group(1)
    assert "#4 [c 2/2] COPY --from=a --from=b" in tip and "failed in 0." in tip
    assert "cache miss: no previous build of this step" in tip and "error: exit code: 1" in tip
    assert re.search(r'id="total">[\d.]+ s<', page) and re.search(r'id="parallelism">[\d.]+×<', page)


_METADATA = {"process_name": "name", "process_labels": "labels", "thread_name": "name",
             "process_sort_index": "sort_index", "thread_sort_index": "sort_index"}


def check_trace_event_format(trace: dict) -> None:
    """TRACE keeps the Trace Event Format (Google's "Trace Event Format" document) as strictly as
    its readers need: the JSON object form; "X" complete events with name, cat, ph, integer pid
    and tid, ts and dur in µs, args an object; "M" metadata events only of the five kinds the
    format defines, each with its one argument; every thread an event is on named; and the
    complete events of each thread nested or apart, never overlapping: Perfetto's JSON importer
    drops overlapping ones (its slice_drop_overlapping_complete_event stat)."""
    assert set(trace) <= {"traceEvents", "displayTimeUnit", "otherData", "systemTraceEvents", "stackFrames",
                          "samples", "metadata"}
    assert trace["displayTimeUnit"] in ("ms", "ns") and isinstance(trace.get("otherData", {}), dict)
    named_threads, named_processes, by_thread = set(), set(), {}
    for event in trace["traceEvents"]:
        assert isinstance(event["name"], str) and isinstance(event["ph"], str) and len(event["ph"]) == 1
        assert type(event["pid"]) is int and type(event["tid"]) is int and isinstance(event.get("args", {}), dict)
        if event["ph"] == "M":
            argument = _METADATA[event["name"]]
            assert set(event["args"]) == {argument}
            assert isinstance(event["args"][argument], int if argument == "sort_index" else str)
            if event["name"] == "thread_name":
                named_threads.add((event["pid"], event["tid"]))
            if event["name"] == "process_name":
                named_processes.add(event["pid"])
            continue
        assert event["ph"] == "X", event
        assert isinstance(event["cat"], str) and event["cat"]
        assert all(type(event[k]) in (int, float) and event[k] >= 0 for k in ("ts", "dur"))
        by_thread.setdefault((event["pid"], event["tid"]), []).append((event["ts"], event["ts"] + event["dur"]))
    assert set(by_thread) <= named_threads and {pid for pid, _ in by_thread} <= named_processes
    for slices in by_thread.values():
        open_ends: list = []
        for start, end in sorted(slices, key=lambda s: (s[0], -s[1])):
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1], f"slices overlap on one thread: {sorted(slices)}"
            open_ends.append(end)


def test_steps_one_after_another_on_a_lane_never_overlap_in_the_trace():
    """Rounded to µs, a step that starts the instant the one before it on its lane ended still
    starts at or after that one's end (its end is rounded, not its duration)."""
    import random
    from builder.timeline import Span, Timeline

    rng = random.Random(11)
    spans, at = [], 1000.0
    for number in range(1, 400):
        length = rng.uniform(0, 3e-6)
        spans.append(Span(str(number), number, f"step {number}", "worker 1", at, at + length))
        at += length
    trace = chrome_trace(Timeline(spans, ["worker 1"], 1000.0, at))
    check_trace_event_format(trace)
    ends = [(e["ts"], e["ts"] + e["dur"]) for e in trace["traceEvents"] if e["ph"] == "X"]
    assert all(end <= next_start for (_, end), (next_start, _) in zip(ends, ends[1:]))


def test_trace_is_chrome_trace_event_format():
    recorder, _ = _diamond()
    trace = chrome_trace(recorder.timeline())
    json.dumps(trace)   # plain JSON
    check_trace_event_format(trace)
    order = {e["args"]["name"]: e["tid"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    sort_index = {e["tid"]: e["args"]["sort_index"] for e in trace["traceEvents"] if e["name"] == "thread_sort_index"}
    assert sorted(order, key=lambda lane: sort_index[order[lane]]) == ["main", "worker 1", "worker 2"]
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in complete] == ["[internal] load build definition from Dockerfile", "[a 2/2] RUN slow",
                                             "[b 2/2] RUN quick", "[c 2/2] COPY --from=a --from=b", "exporting to image"]
    for event in complete:
        assert event["pid"] == 1 and isinstance(event["tid"], int) and event["ts"] >= 0 and event["dur"] >= 0
    threads = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert {threads[e["tid"]] for e in complete} == {"main", "worker 1", "worker 2"}
    slow, quick = complete[1], complete[2]
    assert slow["tid"] != quick["tid"] and quick["ts"] < slow["ts"] + slow["dur"]   # side by side
    assert complete[3]["args"]["state"] == "failed" and complete[3]["args"]["critical"] is True
    assert complete[2]["args"]["critical"] is False


def _plain_steps(progress: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^#(\d+) (\[.*|exporting.*)$", progress, re.MULTILINE)}


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_timeline_and_trace_of_a_real_build(tmp_path, store_root, busybox_registry):
    html_path, progress = timeline_shot.demo_build(str(tmp_path), busybox_registry.reference, store_root)
    page = open(html_path, encoding="utf-8").read()
    bars = re.findall(r'<g class="bar (\w+)( critical)?" data-step="(\d+)"', page)
    steps = _plain_steps(progress)
    assert [step for _, _, step in bars] == sorted(steps, key=int)   # one bar per step of the progress
    by_name = {steps[step]: (state, bool(critical)) for state, critical, step in bars}
    slow = next(n for n in by_name if "RUN sleep 1 " in n)
    quick = next(n for n in by_name if "RUN sleep 0.3 " in n)
    assert by_name[slow] == ("ran", True) and by_name[quick] == ("ran", False)
    assert by_name[next(n for n in by_name if "RUN echo base" in n)] == ("cached", False)
    assert "cache miss: tools.txt changed (sha256:" in page
    trace = json.load(open(tmp_path / "trace.json"))
    check_trace_event_format(trace)
    complete = {e["name"]: e for e in trace["traceEvents"] if e["ph"] == "X"}
    assert len(complete) == len(steps)
    one, two = complete[slow], complete[quick]
    assert one["tid"] != two["tid"] and two["ts"] < one["ts"] + one["dur"]    # the two stages ran at once
    assert trace["otherData"]["critical_path_seconds"] >= 1.0


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_failed_build_still_writes_its_timeline(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN exit 3\n"})
    html_path = str(tmp_path / "t.html")
    proc = build_image("--root", store_root, "--progress", "plain", "--timeline", html_path, context, check=False)
    assert proc.returncode == 1 and "exit code: 3" in proc.stderr
    page = open(html_path, encoding="utf-8").read()
    assert re.search(r"<g class=.bar failed critical. data-step=.\d+. data-state=.failed.><title>#\d+ \[2/2\] RUN exit 3",
                     page), page


def _png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
@pytest.mark.tools
@pytest.mark.skipif(not timeline_shot.chromium_available(), reason="Debian's chromium is not installed")
def test_headless_chromium_renders_the_timeline(tmp_path, store_root, busybox_registry):
    html_path, progress = timeline_shot.demo_build(str(tmp_path), busybox_registry.reference, store_root)
    dom = timeline_shot.dump_dom(html_path)
    steps = _plain_steps(progress)
    bars = re.findall(r'<g class="bar (ran|cached|failed)( critical)?" data-step="(\d+)"', dom)
    assert len(bars) == len(steps) and {b[2] for b in bars} == set(steps)
    critical = [steps[step] for _, mark, step in bars if mark]
    assert any("RUN sleep 1 " in name for name in critical) and critical[-1] == "exporting to image"
    assert not any("RUN sleep 0.3 " in name for name in critical)
    assert dom.count("<rect ") == len(steps) and dom.count("<title>") >= len(steps) + 1
    png = str(tmp_path / "timeline.png")
    timeline_shot.screenshot(html_path, png)
    width, height = _png_size(png)
    assert width == 1130 and height > 300
    assert os.path.getsize(png) > 20_000   # a drawn page, not a blank one


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_unwritable_timeline_is_one_error_line(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN true\n"})
    missing = str(tmp_path / "no-such-dir" / "t.html")
    proc = build_image("--root", store_root, "--progress", "none", "--timeline", missing, context, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"ERROR: failed to write the timeline: {missing}: "
                                                "No such file or directory"]
