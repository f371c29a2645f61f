"""The build as a picture: `--timeline FILE.html` and `--trace FILE.json`.

A TimelineRecorder is a progress callback that passes every event on and notes, per step, when it
started and ended, on which thread (a solver worker is a lane), how it ended (ran, cached, failed),
the steps it read (Started.inputs) and its cache-miss reason. When the build has ended it writes:

    HTML    one self-contained page, inline SVG and CSS, no script and no fetch: a bar per step on
            a time axis, a lane per worker, coloured by state; the critical path outlined; hovering a
            bar shows its <title> (step, command, duration, miss reason); totals above, a table below
    trace   Chrome's trace event format (ph "X" complete events, pid 1, a tid per lane, thread
            names as "M" events), which Perfetto and chrome://tracing open

The critical path is walked back from the step that ended last: each step's predecessor is the
input step that ended last (what it waited for); a step that names no inputs (the export, a base
image) waited for whatever ended last before it started. Parallelism is the sum of the steps'
durations over the build's wall time.
"""

from __future__ import annotations

import html
import json
import threading
import time

from builder import events
from builder.plumbing.files import write_atomically
from builder.plumbing.records import dataclass, field

STATES = ("ran", "cached", "failed")
_COLOURS = {"ran": "#2f6fdf", "cached": "#a3acb9", "failed": "#d63b3b"}
_CRITICAL = "#f29d0c"


@dataclass
class Span:
    id: str
    number: int                     # #N, as the plain progress numbers steps
    name: str
    lane: str
    start: float
    end: float | None = None
    state: str = "ran"
    inputs: tuple[str, ...] = ()
    miss: str = ""
    error: str = ""
    critical: bool = False

    @property
    def duration(self) -> float:
        return max(0.0, (self.end if self.end is not None else self.start) - self.start)


@dataclass
class Timeline:
    spans: list[Span]
    lanes: list[str]
    begin: float
    end: float
    critical: list[Span] = field(default_factory=list)

    @property
    def total(self) -> float:
        return max(0.0, self.end - self.begin)

    @property
    def critical_time(self) -> float:
        return sum(s.duration for s in self.critical)

    @property
    def parallelism(self) -> float:
        return sum(s.duration for s in self.spans) / self.total if self.total > 0 else 1.0


class TimelineRecorder:
    def __init__(self, progress: events.Progress = events.ignore):
        self.progress = progress
        self.spans: dict[str, Span] = {}
        self.lanes: dict[str, str] = {}     # thread name -> lane name
        self.begin = time.monotonic()
        self.lock = threading.Lock()

    def _lane(self) -> str:
        thread = threading.current_thread()
        lane = self.lanes.get(thread.name)
        if lane is None:
            workers = sum(1 for name in self.lanes.values() if name != "main")
            lane = "main" if thread is threading.main_thread() else f"worker {workers + 1}"
            self.lanes[thread.name] = lane
        return lane

    def __call__(self, event: events.Event) -> None:
        now = time.monotonic()
        with self.lock:
            if isinstance(event, events.Started):
                self.spans.setdefault(event.id, Span(event.id, len(self.spans) + 1, event.name, self._lane(), now,
                                                     inputs=event.inputs))
                if event.cache_miss is not None:
                    self.spans[event.id].miss = event.cache_miss.reason
            elif isinstance(event, events.Finished) and event.id in self.spans:
                span = self.spans[event.id]
                span.end = now
                span.state = "cached" if event.cached else "failed" if event.error else "ran"
                span.error = event.error or ""
                if event.cache_miss is not None:
                    span.miss = event.cache_miss.reason
        self.progress(event)

    def timeline(self) -> Timeline:
        with self.lock:
            end = time.monotonic()
            spans = [Span(**vars(s)) for s in self.spans.values()]
            for span in spans:
                if span.end is None:   # the build stopped while it ran
                    span.end, span.state = end, "failed"
            lanes = sorted(set(self.lanes.values()), key=lambda n: (n != "main", len(n), n))
        begin = min([s.start for s in spans], default=self.begin)
        end = max([s.end for s in spans], default=begin)
        timeline = Timeline(spans, lanes, begin, end)
        timeline.critical = critical_path(spans)
        for span in timeline.critical:
            span.critical = True
        return timeline

    def write(self, html: str | None = None, trace: str | None = None) -> None:
        """Writes the page and/or the trace; an OSError names the file asked for, not a temp file."""
        timeline = self.timeline()
        for path, render in ((html, lambda: render_html(timeline).encode()),
                             (trace, lambda: json.dumps(chrome_trace(timeline), indent=1).encode() + b"\n")):
            if not path:
                continue
            try:
                write_atomically(path, render())
            except OSError as error:
                raise OSError(error.errno, error.strerror, path) from None


def critical_path(spans: list[Span]) -> list[Span]:
    """The chain of steps that decided the build's length, first step first."""
    by_id = {s.id: s for s in spans}
    if not spans:
        return []
    last = max(spans, key=lambda s: (s.end, s.number))
    path = [last]
    while True:
        span = path[-1]
        before = [by_id[i] for i in span.inputs if i in by_id]
        if not before:   # no inputs named: what ended last before it started
            before = [s for s in spans if s is not span and s not in path and s.end <= span.start + 1e-6]
        before = [s for s in before if s not in path]
        if not before:
            break
        path.append(max(before, key=lambda s: (s.end, s.number)))
    return path[::-1]


# -- HTML
_WIDTH = 1000          # px of the time axis
_LEFT = 90             # px for the lane names
_LANE = 30
_TOP = 34


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


def render_html(timeline: Timeline) -> str:
    total = timeline.total or 1e-9
    scale = _WIDTH / total
    height = _TOP + _LANE * max(1, len(timeline.lanes)) + 10
    counts = {state: sum(1 for s in timeline.spans if s.state == state) for state in STATES}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 20}" height="{height}" '
           f'role="img" aria-label="build timeline">']
    for tick in _ticks(total):   # the time axis
        x = _LEFT + tick * scale
        svg.append(f'<line class="tick" x1="{x:.1f}" y1="{_TOP - 6}" x2="{x:.1f}" y2="{height - 8}"/>'
                   f'<text class="axis" x="{x:.1f}" y="{_TOP - 10}">{tick:g} s</text>')
    for index, lane in enumerate(timeline.lanes):
        y = _TOP + index * _LANE
        svg.append(f'<text class="lane" x="4" y="{y + _LANE / 2 + 4:.0f}">{html.escape(lane)}</text>')
    for span in timeline.spans:
        y = _TOP + timeline.lanes.index(span.lane) * _LANE + 4
        x = _LEFT + (span.start - timeline.begin) * scale
        width = max(3.0, span.duration * scale)
        classes = f"bar {span.state}" + (" critical" if span.critical else "")
        tip = [f"#{span.number} {span.name}", f"{span.state} in {span.duration:.3f} s ({span.lane})"]
        if span.miss:
            tip.append(f"cache miss: {span.miss}")
        if span.error:
            tip.append(f"error: {span.error}")
        # A nested <svg> clips the label to its bar.
        label = (f'<svg x="{x:.1f}" y="{y}" width="{width:.1f}" height="{_LANE - 8}"><text class="num" x="3" '
                 f'y="15">#{span.number} {html.escape(_short_name(span.name))}</text></svg>' if width > 28 else "")
        svg.append(f'<g class="{classes}" data-step="{span.number}" data-state="{span.state}">'
                   f'<title>{html.escape(chr(10).join(tip))}</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{_LANE - 8}" rx="3"/>{label}</g>')
    svg.append("</svg>")
    rows = "".join(
        f'<tr class="{s.state}{" critical" if s.critical else ""}"><td>#{s.number}</td>'
        f'<td>{html.escape(s.name.split("@sha256:")[0])}</td><td>{s.state}</td><td>{s.duration:.3f} s</td>'
        f'<td>{html.escape(s.lane)}</td><td>{"★" if s.critical else ""}</td>'
        f'<td class="why">{html.escape(s.miss or s.error)}</td></tr>'
        for s in timeline.spans)
    summary = (f'total <b id="total">{_seconds(timeline.total)}</b> · critical path '
               f'<b id="critical">{_seconds(timeline.critical_time)}</b> ({len(timeline.critical)} steps) · '
               f'parallelism <b id="parallelism">{timeline.parallelism:.2f}×</b> · {len(timeline.spans)} steps: '
               + ", ".join(f'<span class="key {state}">{counts[state]} {state}</span>' for state in STATES))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>build-image timeline</title>
<style>
body {{ font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #1c2430; background: #fff; }}
h1 {{ font-size: 17px; margin: 0 0 6px; }}
.summary {{ margin: 0 0 10px; }}
.key {{ padding: 1px 6px; border-radius: 3px; color: #fff; }}
.key.ran {{ background: {_COLOURS['ran']}; }} .key.cached {{ background: {_COLOURS['cached']}; }}
.key.failed {{ background: {_COLOURS['failed']}; }}
.legend {{ margin: 4px 0 8px; color: #4a5566; }}
.legend i {{ display: inline-block; width: 22px; height: 10px; border: 3px solid {_CRITICAL}; vertical-align: middle; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #4a5566; }}
svg .num {{ fill: #fff; font-weight: 600; pointer-events: none; }}
svg .tick {{ stroke: #e3e7ee; }}
.bar.ran rect {{ fill: {_COLOURS['ran']}; }} .bar.cached rect {{ fill: {_COLOURS['cached']}; }}
.bar.failed rect {{ fill: {_COLOURS['failed']}; }}
.bar.critical rect {{ stroke: {_CRITICAL}; stroke-width: 3; }}
.bar:hover rect {{ opacity: .75; }}
table {{ border-collapse: collapse; margin-top: 14px; }}
td, th {{ padding: 2px 8px; border-bottom: 1px solid #e3e7ee; text-align: left; vertical-align: top;
          white-space: nowrap; }}
td.why {{ white-space: normal; min-width: 280px; }}
tr.failed td {{ color: {_COLOURS['failed']}; }}
</style></head><body>
<h1>build-image timeline</h1>
<p class="summary">{summary}</p>
<p class="legend"><i></i> critical path · hover a bar for its step, command, duration and cache-miss reason</p>
{"".join(svg)}
<table><tr><th>step</th><th>name</th><th>state</th><th>time</th><th>lane</th><th>critical</th><th>why it ran</th></tr>
{rows}</table>
</body></html>
"""


def _short_name(name: str) -> str:
    """A bar's label: the instruction without the stage label's counts, a FROM without its digest."""
    name = name.split("@sha256:")[0]
    return name.split("] ", 1)[1] if name.startswith("[") and "] " in name else name


def _ticks(total: float) -> list[float]:
    """About eight round marks from 0 to TOTAL seconds."""
    step = 10 ** len(str(int(total / 8))) / 10 if total >= 8 else 1.0
    for candidate in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500):
        if total / candidate <= 10:
            step = candidate
            break
    count = int(total / step + 1e-9)
    return [round(i * step, 6) for i in range(count + 1)]


# -- Chrome trace events
def chrome_trace(timeline: Timeline) -> dict:
    """The timeline in the Trace Event Format: one "X" event per step, in whole µs from the build's
    start; "M" events name the process and each lane's thread and give the lanes' order. A step's
    end is rounded, not its duration, so that steps one after another on a lane never overlap by a
    rounding: Perfetto drops complete events of one thread that overlap without nesting."""
    tids = {lane: index + 1 for index, lane in enumerate(timeline.lanes)}
    trace: list[dict] = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "build-image"}}]
    for lane, tid in tids.items():
        trace += [{"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": lane}},
                  {"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid, "args": {"sort_index": tid}}]

    def micros(at: float) -> int:
        return round((at - timeline.begin) * 1e6)

    for span in timeline.spans:
        args = {"step": f"#{span.number}", "state": span.state, "critical": span.critical}
        if span.miss:
            args["cache_miss"] = span.miss
        if span.error:
            args["error"] = span.error
        start = micros(span.start)
        trace.append({"name": span.name, "cat": span.state, "ph": "X", "pid": 1, "tid": tids[span.lane],
                      "ts": start, "dur": max(0, micros(span.start + span.duration) - start), "args": args})
    return {"traceEvents": trace, "displayTimeUnit": "ms",
            "otherData": {"total_seconds": round(timeline.total, 6),
                          "critical_path_seconds": round(timeline.critical_time, 6),
                          "parallelism": round(timeline.parallelism, 3)}}
