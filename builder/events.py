"""Progress events: what a build reports (the solver's steps, the export), for the CLI or any
caller to show.

The solver never prints; it calls a `Progress` callback with these events, possibly from several
worker threads at once.
"""

from __future__ import annotations

from typing import Callable

from builder.plumbing.records import dataclass


@dataclass(frozen=True)
class CacheMiss:
    """Why a step was not CACHED, against the most recent earlier build of the same Dockerfile and
    target on this store. `step` is the instruction ("RUN make"), `reason` the whole sentence
    ("build arg VERSION changed ("1.0" → "1.1")"); when the reason is a rebuilt parent step,
    `parent` is that step's id and `parent_name` its name, so a view can say "parent step #7 was
    rebuilt" in its own numbering."""

    step: str
    reason: str
    parent: str | None = None
    parent_name: str | None = None

    def text(self, number_of=None) -> str:
        """The reason, with the parent step named as NUMBER_OF(parent id) gives it (e.g. "#7")."""
        label = number_of(self.parent) if number_of is not None and self.parent is not None else None
        return self.reason if label is None else f"parent step {label} was rebuilt"


@dataclass(frozen=True)
class Started:
    id: str            # stable per step: a vertex digest or a name such as "export"
    name: str
    inputs: tuple[str, ...] = ()          # ids of the steps this one reads (BuildKit's Vertex.inputs)
    cache_miss: CacheMiss | None = None   # why it runs, when that is known before it runs


@dataclass(frozen=True)
class Output:
    id: str
    data: bytes


@dataclass(frozen=True)
class Log:
    """A status line of a step that is not process output ("exporting layers")."""

    id: str
    text: str


@dataclass(frozen=True)
class Finished:
    id: str
    cached: bool = False
    error: str | None = None
    cache_miss: CacheMiss | None = None   # set on every build step that was not CACHED


Event = Started | Output | Log | Finished
Progress = Callable[[Event], None]


def ignore(event: Event) -> None:
    pass
