"""What each step of the last build of a Dockerfile and target saw, so that the next build can
say why a step missed the cache ("src/app.py changed", "build arg VERSION changed").

    BaseStepHistory      the interface: get(identity), put(history)
    DiskStepHistory      one JSON file per Dockerfile and target, ROOT/cache/steps/<identity>.json,
                         rewritten whole (one atomic write) at the end of each successful build,
                         without an fsync of its own: the build's one syncfs (Store.sync) covers it
    MemoryStepHistory    the same JSON in a dict, for tests

A step's facts are what its cache key was made of, in a form that can be compared and shown: the
digest of every file a COPY/ADD read from the context, the environment a RUN saw and which of it
are build args, a base image's manifest digest. Never a secret's value: RUN secrets are mounted at
run time and are in no fact. The facts are plain JSON values; only the explaining code
(builder.solver.explain) reads their meaning.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from abc import ABC, abstractmethod

from builder.plumbing.files import write_atomically
from builder.plumbing.records import dataclass, field

FORMAT = 1


def history_identity(dockerfile: str, target: str | None) -> str:
    """The name a Dockerfile (its absolute path) and target are recorded under: a hex digest."""
    return hashlib.sha256(json.dumps([dockerfile, target or ""]).encode()).hexdigest()


@dataclass(frozen=True)
class StepRecord:
    stage: str                      # the stage's name, or stage-N
    position: int                   # the step's place in its stage (1 is FROM), as "[stage 2/5]"
    text: str                       # the instruction as progress names it: "RUN make"
    line: int                       # its first Dockerfile line (0: none, e.g. a FROM)
    key: str                        # its cache key
    facts: dict = field(default_factory=dict, hash=False, compare=False)

    def to_json(self) -> dict:
        return {"stage": self.stage, "position": self.position, "text": self.text, "line": self.line,
                "key": self.key, "facts": self.facts}

    @classmethod
    def from_json(cls, data: dict) -> "StepRecord":
        return cls(str(data["stage"]), int(data["position"]), str(data["text"]), int(data["line"]),
                   str(data["key"]), dict(data.get("facts") or {}))


@dataclass(frozen=True)
class BuildHistory:
    identity: str
    dockerfile: str
    target: str | None
    timestamps: str                 # the layers' timestamp mode (builder.solver.solver.layer_timestamps)
    steps: tuple[StepRecord, ...]

    def to_json(self) -> dict:
        return {"format": FORMAT, "identity": self.identity, "dockerfile": self.dockerfile,
                "target": self.target, "timestamps": self.timestamps,
                "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: dict) -> "BuildHistory | None":
        if data.get("format") != FORMAT:
            return None
        return cls(str(data["identity"]), str(data["dockerfile"]), data.get("target"), str(data["timestamps"]),
                   tuple(StepRecord.from_json(s) for s in data["steps"]))


def _decode(text: str | bytes) -> BuildHistory | None:
    try:
        return BuildHistory.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None   # an unreadable history only means "no previous build"


def _encode(history: BuildHistory) -> bytes:
    return json.dumps(history.to_json(), sort_keys=True, separators=(",", ":")).encode()


class BaseStepHistory(ABC):
    @abstractmethod
    def get(self, identity: str) -> BuildHistory | None:
        """The last recorded build under IDENTITY; None if there is none or it cannot be read."""

    @abstractmethod
    def put(self, history: BuildHistory) -> None:
        """Record HISTORY under its identity, replacing the one there, all at once."""


class DiskStepHistory(BaseStepHistory):
    def __init__(self, root: str):
        self.root = root            # created on the first put: a build that records nothing makes nothing

    def _path(self, identity: str) -> str:
        return os.path.join(self.root, identity + ".json")

    def get(self, identity: str) -> BuildHistory | None:
        try:
            with open(self._path(identity), "rb") as f:
                return _decode(f.read())
        except OSError:
            return None

    def put(self, history: BuildHistory) -> None:
        os.makedirs(self.root, exist_ok=True)
        write_atomically(self._path(history.identity), _encode(history), durable=False)


class MemoryStepHistory(BaseStepHistory):
    """Histories kept as the JSON the disk twin writes (`texts`: identity -> bytes)."""

    def __init__(self) -> None:
        self.texts: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, identity: str) -> BuildHistory | None:
        text = self.texts.get(identity)
        return None if text is None else _decode(text)

    def put(self, history: BuildHistory) -> None:
        with self._lock:
            self.texts[history.identity] = _encode(history)
