"""Progress events: what a build reports (the solver's steps, the export), for the CLI or any
caller to show.

The solver never prints; it calls a `Progress` callback with these events, possibly from several
worker threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Started:
    id: str            # stable per step: a vertex digest or a name such as "export"
    name: str


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


Event = Started | Output | Log | Finished
Progress = Callable[[Event], None]


def ignore(event: Event) -> None:
    pass
