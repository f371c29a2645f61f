"""Progress output for the terminal."""

from __future__ import annotations

import shutil
import sys
import threading
import time

from builder.plumbing.records import dataclass, field


class PlainProgress:
    """BuildKit's plain progress format: `#N name`, `#N 0.123 output`, `#N DONE 0.3s` / `#N CACHED`,
    and build-image's `#N cache miss: STEP: REASON` for a step that runs (after its name if the
    reason is known when it starts, else before its DONE)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.numbers: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.partial: dict[str, bytes] = {}
        self.explained: set[str] = set()
        self.lock = threading.Lock()

    def _miss_line(self, n: int, step_id: str, miss) -> str:
        self.explained.add(step_id)
        return f"#{n} cache miss: {miss.step}: {miss.text(self._label)}\n"

    def _label(self, step_id: str) -> str | None:
        return f"#{self.numbers[step_id]}" if step_id in self.numbers else None

    def _number(self, step_id: str) -> int:
        if step_id not in self.numbers:
            self.numbers[step_id] = len(self.numbers) + 1
        return self.numbers[step_id]

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def __call__(self, event) -> None:
        from builder import events as ev

        with self.lock:
            n = self._number(event.id)
            if isinstance(event, ev.Started):
                self.started[event.id] = time.monotonic()
                self._write(f"\n#{n} {event.name}\n")
                if event.cache_miss is not None:
                    self._write(self._miss_line(n, event.id, event.cache_miss))
            elif isinstance(event, ev.Output):
                data = self.partial.pop(event.id, b"") + event.data
                *lines, rest = data.split(b"\n")
                elapsed = time.monotonic() - self.started.get(event.id, time.monotonic())
                for line in lines:
                    self._write(f"#{n} {elapsed:.3f} {line.decode(errors='replace')}\n")
                if rest:
                    self.partial[event.id] = rest
            elif isinstance(event, ev.Log):
                self._write(f"#{n} {event.text}\n")
            elif isinstance(event, ev.Finished):
                rest = self.partial.pop(event.id, b"")
                elapsed = time.monotonic() - self.started.get(event.id, time.monotonic())
                if rest:
                    self._write(f"#{n} {elapsed:.3f} {rest.decode(errors='replace')}\n")
                if event.cache_miss is not None and event.id not in self.explained:
                    self._write(self._miss_line(n, event.id, event.cache_miss))
                if event.cached:
                    self._write(f"#{n} CACHED\n")
                elif event.error:
                    self._write(f"#{n} ERROR: {event.error}\n")
                else:
                    self._write(f"#{n} DONE {elapsed:.1f}s\n")


@dataclass
class _Step:
    name: str
    started: float
    ended: float | None = None
    state: str = "running"          # running | done | cached | error
    miss: str = ""                  # "cache miss: REASON", shown under the step until the end
    lines: list[str] = field(default_factory=list)
    partial: bytes = b""


class TtyProgress:
    """BuildKit's tty view: a live list of steps redrawn in place, the last output lines of the
    running ones beneath them, and a header with the elapsed time and the finished count."""

    REFRESH = 0.1
    OUTPUT_LINES = 6

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.steps: dict[str, _Step] = {}
        self.lock = threading.Lock()
        self.begun = time.monotonic()
        self.drawn = 0                 # lines the last frame took, to move back over them
        self.stopped = threading.Event()
        self.ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self.ticker.start()

    def __call__(self, event) -> None:
        from builder import events as ev

        with self.lock:
            now = time.monotonic()
            if isinstance(event, ev.Started):
                step = self.steps.setdefault(event.id, _Step(event.name, now))
                if event.cache_miss is not None:
                    step.miss = self._miss(event.cache_miss)
                return
            step = self.steps.get(event.id)
            if step is None:
                return
            if isinstance(event, ev.Output):
                *complete, step.partial = (step.partial + event.data).split(b"\n")
                step.lines.extend(line.decode(errors="replace") for line in complete)
                del step.lines[:-self.OUTPUT_LINES]
            elif isinstance(event, ev.Log):
                step.lines = (step.lines + [event.text])[-self.OUTPUT_LINES:]
            elif isinstance(event, ev.Finished):
                if event.cache_miss is not None:
                    step.miss = self._miss(event.cache_miss)
                step.ended = now
                step.state = "cached" if event.cached else "error" if event.error else "done"
                if event.error:
                    step.lines = (step.lines + [f"ERROR: {event.error}"])[-self.OUTPUT_LINES:]

    def _miss(self, miss) -> str:
        numbers = {step_id: f"#{i}" for i, step_id in enumerate(self.steps, start=1)}
        return f"cache miss: {miss.text(numbers.get)}"

    def close(self) -> None:
        """Draws the final frame; call it once the build has ended, however it ended."""
        self.stopped.set()
        self.ticker.join()
        with self.lock:
            self._draw()

    def _tick(self) -> None:
        while not self.stopped.wait(self.REFRESH):
            with self.lock:
                self._draw()

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        now = time.monotonic()
        done = sum(1 for s in self.steps.values() if s.state != "running")
        rows = [f"[+] Building {now - self.begun:.1f}s ({done}/{len(self.steps)})"
                + (" FINISHED" if self.stopped.is_set() else "")]
        for step in self.steps.values():
            seconds = (step.ended or now) - step.started
            status = {"cached": "CACHED", "error": "ERROR"}.get(step.state, f"{seconds:.1f}s")
            label = f" => {step.name}"
            room = max(10, width - len(status) - 2)
            rows.append(f"{label[:room]:<{room}} {status}")
            if step.miss:
                rows.append(f" => => {step.miss}"[:width - 1])
            if step.state in ("running", "error"):
                rows.extend(f" => => # {line}"[:width - 1] for line in step.lines)
        frame = "".join(f"\x1b[2K{row}\n" for row in rows)
        self.stream.write(f"\x1b[{self.drawn}F" if self.drawn else "")
        self.stream.write(frame)
        # Clear what is left of a longer previous frame.
        extra = self.drawn - len(rows)
        if extra > 0:
            self.stream.write("\x1b[2K\n" * extra + f"\x1b[{extra}F")
        self.stream.flush()
        self.drawn = len(rows)


class RawJsonProgress:
    """`--progress rawjson`: one BuildKit SolveStatus JSON object a line (the client's field names,
    empty fields left out, log data base64 as Go writes []byte). Steps build-image names rather than
    digests ("export") get a digest of their name, so every vertex is a digest as in BuildKit."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.vertices: dict[str, dict] = {}
        self.explained: set[str] = set()
        self.lock = threading.Lock()

    def _miss_log(self, digest: str, miss, now: str) -> dict:
        """A cache-miss reason as a log line of its vertex: BuildKit's SolveStatus has no field for
        it, and every SolveStatus reader shows logs. A rebuilt parent is named by its step name."""
        import base64

        text = f"cache miss: {miss.step}: {miss.reason}\n"
        return {"vertex": digest, "stream": 1, "data": base64.b64encode(text.encode()).decode(), "timestamp": now}

    @staticmethod
    def _digest(step_id: str) -> str:
        import hashlib

        return step_id if step_id.startswith("sha256:") else "sha256:" + hashlib.sha256(step_id.encode()).hexdigest()

    @staticmethod
    def _now() -> str:
        import datetime

        now = datetime.datetime.now(datetime.timezone.utc)
        return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}000Z"

    def __call__(self, event) -> None:
        import base64
        import json

        from builder import events as ev

        with self.lock:
            digest, now = self._digest(event.id), self._now()
            status: dict = {}
            if isinstance(event, ev.Started):
                vertex = self.vertices[event.id] = {"digest": digest, "name": event.name, "started": now}
                if event.inputs:
                    vertex["inputs"] = [self._digest(i) for i in event.inputs]
                status["vertexes"] = [vertex]
                if event.cache_miss is not None:
                    status["logs"] = [self._miss_log(digest, event.cache_miss, now)]
                    self.explained.add(event.id)
            elif isinstance(event, (ev.Output, ev.Log)):
                data = event.data if isinstance(event, ev.Output) else (event.text + "\n").encode()
                status["logs"] = [{"vertex": digest, "stream": 1, "data": base64.b64encode(data).decode(),
                                   "timestamp": now}]
            elif isinstance(event, ev.Finished):
                vertex = dict(self.vertices.get(event.id) or {"digest": digest, "started": now})
                vertex["completed"] = now
                if event.cached:
                    vertex["cached"] = True
                if event.error:
                    vertex["error"] = event.error
                status["vertexes"] = [vertex]
                if event.cache_miss is not None and event.id not in self.explained:
                    status["logs"] = [self._miss_log(digest, event.cache_miss, now)]
            else:
                return
            self.stream.write(json.dumps(status, separators=(",", ":")) + "\n")
            self.stream.flush()


def make_progress(mode: str, stream=sys.stderr):
    """The progress display for --progress: tty on a terminal (asked for, or `auto`), rawjson, else
    plain; `tty` without a terminal falls back to plain, as buildx."""
    if mode == "rawjson":
        return RawJsonProgress(stream)
    if mode in ("tty", "auto") and stream.isatty():
        return TtyProgress(stream)
    return PlainProgress(stream)
