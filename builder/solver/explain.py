"""Why a step missed the cache: this build's facts of a step against the last build's.

The last successful build of the same Dockerfile and target on this store left a BuildHistory
(builder.cache.step_history): per step its place, instruction, cache key and facts (what its key
was made of: op.facts()). A step that must run is matched with its old self (same stage and
instruction, else the same place in the stage) and the first reason that holds is given:

    --no-cache / --no-cache-filter STAGE      the build was told to ignore the cache
    no previous build of this step            nothing to compare with
    Dockerfile line N changed: "A" → "B"      the instruction at its place is another
    src/app.py changed (…), 1 of 412 files    a file COPY/ADD or a bind mount read
    build arg V changed / env E changed       the environment a RUN saw
    WORKDIR changed, base image digest changed, ...
    parent step #K was rebuilt                its own inputs are as before, a parent's key is not
    same cache key as before, ...             the record or its layer is gone (pruned)

A layer step that build does not have is compared with the history an imported cache carries
(--cache-from: the build that exported it, `exported`), fetched the first time it is needed; the
reason then ends "(compared with the imported cache)".

Everything here is computed only for steps that run, and once per step for the history written
at the end of the build; a fully cached rebuild never gets here (builder.plan_cache).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from builder import events
from builder.cache.step_history import (BaseStepHistory, BuildHistory, DiskStepHistory, StepRecord,  # noqa: F401
                                        decode_exported, encode_exported, history_identity)
# (decode_exported: what the pipeline gives an imported cache to read its steps' facts with)
from builder.llb import Vertex
from builder.plumbing.records import replace

# "[build 2/5] RUN make", "[2/5] RUN make" (one stage), "[ 2/12] ..." (padded): as convert names steps.
_LABEL = re.compile(r"^\[(?:(?P<stage>\S+) )?\s*(?P<position>\d+)/\d+\] (?P<text>.*)$", re.DOTALL)
_LISTED = 3            # changed files named in one reason; the rest are counted
_VALUE_ROOM = 60       # characters of a value shown


class MissExplainer:
    def __init__(self, history: BaseStepHistory, identity: str, dockerfile: str, target: str | None, *,
                 names: Mapping[str, str], lines: Mapping[str, tuple[int, int]] = {},
                 arg_names: Mapping[str, tuple[str, ...]] = {}, no_cache: bool = False,
                 no_cache_filter: Mapping[str, str] = {}, exported_name: str = "",
                 imported: Callable[[], Sequence[BuildHistory]] | None = None):
        self.history = history
        self.identity = identity
        self.dockerfile = dockerfile
        self.target = target
        self.names = names
        self.lines = lines
        self.arg_names = arg_names
        self.no_cache = no_cache
        self.no_cache_filter = no_cache_filter     # vertex digest -> the --no-cache-filter stage
        # The Dockerfile as the context names it ("Dockerfile", "docker/app.Dockerfile"): what a
        # cache export calls it, so that another checkout of the same sources finds it.
        self.exported_name = exported_name or os.path.basename(dockerfile)
        # The histories imported caches carry (--cache-from), read only when a step's miss has no
        # earlier build here to compare with: a build that misses nothing never fetches them.
        self.imported = imported
        self.previous = history.get(identity)
        self._records: dict[Vertex, StepRecord] = {}
        self._lock = threading.Lock()
        self._local = _Earlier(self.previous)
        self._imported: _Earlier | None = None
        self._import_lock = threading.Lock()

    @classmethod
    def on_disk(cls, store_root: str, dockerfile: str, target: str | None, **options) -> "MissExplainer":
        """Over the store's histories, ROOT/cache/steps/ (DockerFILE is an absolute path)."""
        history = DiskStepHistory(os.path.join(store_root, "cache", "steps"))
        return cls(history, history_identity(dockerfile, target), dockerfile, target, **options)

    # -- this build's records
    def record(self, state, vertex: Vertex) -> StepRecord:
        record = self._records.get(vertex)
        if record is None:
            name = self.names.get(vertex.digest, "")
            match = _LABEL.match(name)
            stage, position, text = ((match.group("stage") or "", int(match.group("position")), match.group("text"))
                                     if match else ("", 0, name))
            facts = state.op(vertex).facts()
            if facts.get("digest"):   # FROM name@digest: the digest is a fact, not the instruction
                text = text.replace("@" + facts["digest"], "")
            if vertex.digest in self.arg_names:
                facts["args"] = list(self.arg_names[vertex.digest])
            record = StepRecord(stage, position, text, self.lines.get(vertex.digest, (0, 0))[0],
                                state.key(vertex), facts)
            with self._lock:
                self._records[vertex] = record
        return record

    def save(self, state, vertices: Iterable[Vertex], timestamps: str) -> None:
        """Writes this build's steps as the history the next build compares with (one write)."""
        steps = tuple(self.record(state, v) for v in dict.fromkeys(vertices)
                      if v.digest in self.names and state.op(v).explains_misses)
        self.history.put(BuildHistory(self.identity, self.dockerfile, self.target, timestamps, steps))

    def exported(self, state, vertices: Iterable[Vertex], timestamps: str, shown: Iterable[Vertex] = ()) -> bytes:
        """The history a cache export carries for VERTICES (the steps it exports): this build's
        records, the Dockerfile named as the context names it. The environment of a step not in
        SHOWN (the image's own chain, whose build args and env its config and history publish
        anyway) is exported as digests of its values: a builder stage's build arg may be a token
        that the image never shows, and a pushed cache must not publish it."""
        shown = set(shown)
        steps = tuple(self.record(state, v) if v in shown else _env_hidden(self.record(state, v))
                      for v in dict.fromkeys(vertices) if v.digest in self.names and state.op(v).explains_misses)
        return encode_exported(BuildHistory(history_identity(self.exported_name, self.target),
                                            self.exported_name, self.target, timestamps, steps))

    def _old(self, record: StepRecord, imported_too: bool = True) -> tuple[StepRecord | None, "_Earlier"]:
        """RECORD's old self and the build it is from: this store's last build, else (IMPORTED_TOO)
        the build that wrote an imported cache."""
        old = self._local.find(record)
        if old is not None or self.imported is None or not imported_too:
            return old, self._local
        earlier = self._imported_build()
        return earlier.find(record), earlier

    def _imported_build(self) -> "_Earlier":
        with self._import_lock:
            if self._imported is None:
                try:
                    histories = self.imported() if self.imported is not None else ()
                except Exception:   # the caller warns about a source it cannot read; never fail here
                    histories = ()
                chosen = next((h for h in histories if h.dockerfile == self.exported_name
                               and (h.target or None) == (self.target or None)), None)
                self._imported = _Earlier(chosen, imported=True)
            return self._imported

    # -- reasons
    def explain(self, state, vertex: Vertex, timestamps: str) -> events.CacheMiss:
        """Why VERTEX, which is about to run (or ran: an image source that fetched), missed."""
        record = self.record(state, vertex)
        step = _short(record.text, room=None)

        against = ""   # what the reason was found against, when it is not this store's last build

        def miss(reason: str, **parent) -> events.CacheMiss:
            return events.CacheMiss(step, reason + against, **parent)

        adds_layer = state.op(vertex).adds_layer
        if adds_layer and self.no_cache:
            return miss("--no-cache")
        if adds_layer and vertex.digest in self.no_cache_filter:
            return miss(f"--no-cache-filter {self.no_cache_filter[vertex.digest]}")
        # A base image that had to be pulled is compared with this store's builds only: a build
        # whose every step an imported cache gives never fetches the facts. The first step over a
        # changed base says so, against the imported facts too.
        old, earlier = self._old(record, imported_too=adds_layer)
        if old is None:
            return miss("no previous build of this step")
        if earlier.imported:
            against = " (compared with the imported cache)"
        if old.text != record.text:
            where = f"Dockerfile line {record.line}" if record.line else "Dockerfile line"
            return miss(f'{where} changed ("{_short(old.text)}" → "{_short(record.text)}")')
        changes = _fact_changes(old.facts, record.facts)
        if changes:
            return miss("; ".join(changes))
        for parent in state.step_parents(vertex):
            if not state.op(parent).explains_misses:
                continue   # the build context: what a step reads of it is in its own facts
            parent_record = self.record(state, parent)
            parent_old, _ = self._old(parent_record)
            if parent_old is not None and parent_old.key == parent_record.key:
                continue
            base = parent_record.facts.get("digest")
            if base and parent_old is not None and parent_old.facts.get("digest"):
                return miss(f"base image {parent_record.facts.get('base')} digest changed "
                            f"({_digest(parent_old.facts['digest'])} → {_digest(base)})")
            name = self.names.get(parent.digest, parent_record.text)
            return miss(f"parent step {name} was rebuilt", parent=parent.digest, parent_name=name)
        if old.key == record.key:
            if not adds_layer:
                return miss("its layers were not in the store")
            if earlier.build is not None and earlier.build.timestamps != timestamps:
                return miss(f"layer timestamps changed ({earlier.build.timestamps} → {timestamps})")
            if earlier.imported:
                return miss("same cache key as the imported record, but the record could not be used "
                            "(see the warnings)")
            return miss("same cache key as before, but its cache record or layer is gone (pruned?)")
        return miss("cache key changed (an input build-image does not explain)")


class _Earlier:
    """One earlier build's steps, found by place: same stage and instruction, else the same
    instruction in the stage, else the same place in the stage."""

    def __init__(self, build: BuildHistory | None, imported: bool = False):
        self.build = build
        self.imported = imported
        old = build.steps if build else ()
        self._by_place = {(s.stage, s.position, s.text): s for s in reversed(old)}
        self._by_text = {(s.stage, s.text): s for s in reversed(old)}
        self._by_position = {(s.stage, s.position): s for s in reversed(old)}

    def find(self, record: StepRecord) -> StepRecord | None:
        if not record.position:
            return self._by_text.get(("", record.text))
        return (self._by_place.get((record.stage, record.position, record.text))
                or self._by_text.get((record.stage, record.text))
                or self._by_position.get((record.stage, record.position)))


def _fact_changes(old: dict, new: dict) -> list[str]:
    changes: list[str] = []
    if old.get("digest") != new.get("digest") and new.get("digest"):
        changes.append(f"base image digest changed ({_digest(old.get('digest', ''))} → {_digest(new['digest'])})")
    old_reads, new_reads = old.get("reads", []), new.get("reads", [])
    if [r.get("paths") for r in old_reads] != [r.get("paths") for r in new_reads]:
        changes.append("the paths it reads changed")
    else:
        for before, after in zip(old_reads, new_reads):
            text = _file_changes(before.get("files", {}), after.get("files", {}))
            if text:
                changes.append(text)
    changes += _env_changes(old, new)
    old_settings, new_settings = old.get("settings", {}), new.get("settings", {})
    for name in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(name, "") != new_settings.get(name, ""):
            changes.append(f'{name} changed ("{_short(old_settings.get(name, ""))}" → '
                           f'"{_short(new_settings.get(name, ""))}")')
    return changes


def _file_changes(old: dict[str, str], new: dict[str, str]) -> str:
    """`src/app.py changed (sha256:1a2b3c4d… → sha256:9f8e7d6c…), 1 of 412 files`; files before
    directories (a directory's digest is only its mode)."""
    changed = [(p, f"{p} changed ({_digest(old[p])} → {_digest(new[p])})")
               for p in new if p in old and old[p] != new[p]]
    changed += [(p, f"{p} added") for p in new if p not in old]
    changed += [(p, f"{p} removed") for p in old if p not in new]
    if not changed:
        return ""
    changed.sort(key=lambda item: (item[0].endswith("/"), item[0]))
    shown = ", ".join(text for _, text in changed[:_LISTED])
    if len(changed) > _LISTED:
        shown += f" and {len(changed) - _LISTED} more"
    files = sum(1 for p in new if not p.endswith("/"))
    return f"{shown}, {len(changed)} of {files} file{'s' if files != 1 else ''}"


def _env_hidden(record: StepRecord) -> StepRecord:
    """RECORD with its environment's values as digests (`env_hidden`), for an exported cache."""
    if not record.facts.get("env"):
        return record
    env = [f"{name}={_value_digest(value)}" for name, value in _env_map(record.facts["env"]).items()]
    return replace(record, facts={**record.facts, "env": env, "env_hidden": True})


def _value_digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def _env_changes(old: dict, new: dict) -> list[str]:
    before, after = _env_map(old.get("env", [])), _env_map(new.get("env", []))
    if old.get("env_hidden"):   # an imported cache's builder stage: compared, and shown, as digests
        after = {name: _value_digest(value) for name, value in after.items()}

        def show(value: str) -> str:
            return _digest(value)
    else:
        def show(value: str) -> str:
            return f'"{_short(value)}"'
    args = set(old.get("args", [])) | set(new.get("args", []))
    changes = []
    for name in sorted(set(before) | set(after)):
        kind = "build arg" if name in args else "env"
        if name not in before:
            changes.append(f"{kind} {name} set ({show(after[name])})")
        elif name not in after:
            changes.append(f"{kind} {name} unset (was {show(before[name])})")
        elif before[name] != after[name]:
            changes.append(f"{kind} {name} changed ({show(before[name])} → {show(after[name])})")
    return changes


def _env_map(env: list[str]) -> dict[str, str]:
    return dict(entry.partition("=")[::2] for entry in env)


def _digest(value: str) -> str:
    hex_part = value.partition(":")[2] or value
    return f"sha256:{hex_part[:8]}…"


def _short(value: str, room: int | None = _VALUE_ROOM) -> str:
    """VALUE on one line (a reason is one line of the progress), cut to ROOM characters."""
    value = value.replace("\r", "\\r").replace("\n", "\\n")
    return value if room is None or len(value) <= room else value[:room - 1] + "…"
