"""Progress output for the terminal."""

from __future__ import annotations

import sys
import threading
import time

class PlainProgress:
    """BuildKit's plain progress format: `#N name`, `#N 0.123 output`, `#N DONE 0.3s` / `#N CACHED`."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.numbers: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.partial: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def _number(self, step_id: str) -> int:
        if step_id not in self.numbers:
            self.numbers[step_id] = len(self.numbers) + 1
        return self.numbers[step_id]

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def __call__(self, event) -> None:
        from builder.solver import progress as ev

        with self.lock:
            n = self._number(event.id)
            if isinstance(event, ev.Started):
                self.started[event.id] = time.monotonic()
                self._write(f"\n#{n} {event.name}\n")
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
                if event.cached:
                    self._write(f"#{n} CACHED\n")
                elif event.error:
                    self._write(f"#{n} ERROR: {event.error}\n")
                else:
                    self._write(f"#{n} DONE {elapsed:.1f}s\n")


