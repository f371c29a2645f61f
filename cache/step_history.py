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

A build cache export (--cache-to) carries the same history, for the steps it exports, as one more
blob (`encode_exported`/`decode_exported`), so that another machine's misses are explained against
the build that wrote the cache. There the Dockerfile is named as the context names it (portable
across checkouts), and a history that does not have this module's shape is refused whole.
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


def encode_exported(history: BuildHistory) -> bytes:
    """HISTORY as a cache export carries it (canonical JSON; its facts are plain JSON values)."""
    return _encode(history)


def decode_exported(data: bytes) -> BuildHistory:
    """A history a cache export carried, checked to have the shape the explainer reads: any other
    is a ValueError (it came from elsewhere, so nothing in it is taken on trust)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a step history of format {FORMAT}")
    if not (isinstance(doc.get("dockerfile"), str) and isinstance(doc.get("timestamps"), str)
            and isinstance(doc.get("target"), (str, type(None))) and isinstance(doc.get("steps"), list)):
        raise ValueError("its dockerfile, target, timestamps or steps are missing or of the wrong type")
    steps = []
    for number, step in enumerate(doc["steps"]):
        problem = _step_problem(step)
        if problem:
            raise ValueError(f"step {number}: {problem}")
        steps.append(StepRecord.from_json(step))
    return BuildHistory(str(doc.get("identity", "")), doc["dockerfile"], doc["target"], doc["timestamps"],
                        tuple(steps))


def _step_problem(step) -> str:
    """What is wrong with STEP's shape, or "" (the fields and facts explain.py reads)."""
    if not isinstance(step, dict):
        return "not an object"
    for name, kind in (("stage", str), ("position", int), ("text", str), ("line", int), ("key", str),
                       ("facts", dict)):
        if not isinstance(step.get(name), kind) or isinstance(step.get(name), bool):
            return f"{name} is missing or not a {kind.__name__}"
    facts = step["facts"]
    strings = lambda value: isinstance(value, list) and all(isinstance(v, str) for v in value)   # noqa: E731
    mapping = lambda value: (isinstance(value, dict)                                             # noqa: E731
                             and all(isinstance(v, str) for v in value.values()))
    checks = {"digest": lambda v: isinstance(v, str), "base": lambda v: isinstance(v, str),
              "env_hidden": lambda v: isinstance(v, bool),
              "env": strings, "args": strings, "settings": mapping,
              "reads": lambda v: isinstance(v, list) and all(
                  isinstance(r, dict) and strings(r.get("paths")) and mapping(r.get("files")) for r in v)}
    for name, check in checks.items():
        if name in facts and not check(facts[name]):
            return f"its {name} fact has the wrong shape"
    return ""


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
