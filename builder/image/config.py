"""The OCI image config (image-spec config.md) with the fields Docker adds to it.

The JSON follows what BuildKit writes: lower-case top-level keys, Docker's capitalised keys inside
"config", and every optional field left out when unset (Go's `omitempty`). `to_bytes` is the canonical
encoding the config digest (the image ID) is computed over.

`from_json` reads configs made by other tools too: missing fields, `null` lists and maps, `"config": null`,
and Docker's extras (`container_config`, `container`, `docker_version`, `Hostname`, `Image`, ...) are
accepted; the extras are dropped because a built image gets a fresh config anyway.
"""

from __future__ import annotations

from builder.plumbing import records
import json
from builder.plumbing.records import dataclass, field
from typing import Any

from builder.plumbing.canonical import canonical_json

INLINE_CACHE_KEY = "moby.buildkit.cache.v0"   # as BuildKit names it (builder.remotecache reads it)


def _tuple(value: Any) -> tuple:
    return tuple(value) if value is not None else ()


def _optional_tuple(value: Any) -> tuple | None:
    return tuple(value) if value is not None else None


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]            # ("NONE",) | ("CMD", ...) | ("CMD-SHELL", "...")
    interval: int = 0                # nanoseconds; 0 = unset, left out of the JSON
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", _tuple(self.test))

    def to_json(self) -> dict:
        d: dict[str, Any] = {"Test": list(self.test)}
        for key, value in (("Interval", self.interval), ("Timeout", self.timeout),
                           ("StartPeriod", self.start_period), ("StartInterval", self.start_interval),
                           ("Retries", self.retries)):
            if value:
                d[key] = value
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Healthcheck":
        return cls(
            test=_tuple(d.get("Test")),
            interval=int(d.get("Interval") or 0),
            timeout=int(d.get("Timeout") or 0),
            start_period=int(d.get("StartPeriod") or 0),
            start_interval=int(d.get("StartInterval") or 0),
            retries=int(d.get("Retries") or 0),
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """The JSON "config" object: how a container of this image runs.

    Sets (ports, volumes) are kept sorted and labels sorted by key with the last value of a repeated key
    winning, so two configs that mean the same thing compare equal and encode to the same bytes.
    `entrypoint`/`cmd`/`shell` are None when unset (left out of the JSON) and () when explicitly empty.
    """

    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: tuple[str, ...] = ()
    working_dir: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str = ""
    healthcheck: Healthcheck | None = None
    shell: tuple[str, ...] | None = None
    on_build: tuple[str, ...] = ()
    args_escaped: bool = False

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("exposed_ports", tuple(sorted(set(_tuple(self.exposed_ports)))))
        set_("env", _tuple(self.env))
        set_("entrypoint", _optional_tuple(self.entrypoint))
        set_("cmd", _optional_tuple(self.cmd))
        set_("volumes", tuple(sorted(set(_tuple(self.volumes)))))
        labels = self.labels.items() if isinstance(self.labels, dict) else _tuple(self.labels)
        set_("labels", tuple(sorted(dict(labels).items())))
        set_("shell", _optional_tuple(self.shell))
        set_("on_build", _tuple(self.on_build))

    def to_json(self) -> dict:
        d: dict[str, Any] = {}
        if self.user:
            d["User"] = self.user
        if self.exposed_ports:
            d["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.env:
            d["Env"] = list(self.env)
        if self.entrypoint is not None:
            d["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            d["Cmd"] = list(self.cmd)
        if self.volumes:
            d["Volumes"] = {path: {} for path in self.volumes}
        if self.working_dir:
            d["WorkingDir"] = self.working_dir
        if self.labels:
            d["Labels"] = dict(self.labels)
        if self.stop_signal:
            d["StopSignal"] = self.stop_signal
        if self.healthcheck is not None:
            d["Healthcheck"] = self.healthcheck.to_json()
        if self.shell is not None:
            d["Shell"] = list(self.shell)
        if self.on_build:
            d["OnBuild"] = list(self.on_build)
        if self.args_escaped:
            d["ArgsEscaped"] = True
        return d

    @classmethod
    def from_json(cls, d: dict | None) -> "RuntimeConfig":
        d = d or {}
        health = d.get("Healthcheck")
        return cls(
            user=d.get("User") or "",
            exposed_ports=tuple(d.get("ExposedPorts") or ()),
            env=_tuple(d.get("Env")),
            entrypoint=_optional_tuple(d.get("Entrypoint")),
            cmd=_optional_tuple(d.get("Cmd")),
            volumes=tuple(d.get("Volumes") or ()),
            working_dir=d.get("WorkingDir") or "",
            labels=tuple((d.get("Labels") or {}).items()),
            stop_signal=d.get("StopSignal") or "",
            healthcheck=Healthcheck.from_json(health) if health else None,
            shell=_optional_tuple(d.get("Shell")),
            on_build=_tuple(d.get("OnBuild")),
            args_escaped=bool(d.get("ArgsEscaped")),
        )


@dataclass(frozen=True)
class HistoryEntry:
    created: str                     # RFC 3339 UTC, e.g. "2026-11-23T07:35:00.123456789Z"
    created_by: str = ""
    comment: str = ""
    empty_layer: bool = False        # written only when true, as Docker does
    author: str = ""

    def to_json(self) -> dict:
        d: dict[str, Any] = {}
        for key, value in (("created", self.created), ("created_by", self.created_by),
                           ("comment", self.comment), ("author", self.author)):
            if value:
                d[key] = value
        if self.empty_layer:
            d["empty_layer"] = True
        return d

    @classmethod
    def from_json(cls, d: dict) -> "HistoryEntry":
        return cls(
            created=d.get("created") or "",
            created_by=d.get("created_by") or "",
            comment=d.get("comment") or "",
            empty_layer=bool(d.get("empty_layer")),
            author=d.get("author") or "",
        )


@dataclass(frozen=True)
class ImageConfig:
    architecture: str = "amd64"
    os: str = "linux"
    variant: str = ""
    created: str | None = None
    author: str = ""
    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    diff_ids: tuple[str, ...] = ()   # uncompressed layer digests, bottom layer first
    history: tuple[HistoryEntry, ...] = ()
    # BuildKit's inline cache (--cache-to type=inline): base64 cache config under INLINE_CACHE_KEY.
    inline_cache: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "diff_ids", _tuple(self.diff_ids))
        object.__setattr__(self, "history", _tuple(self.history))

    def to_json(self) -> dict:
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        if self.created:
            d["created"] = self.created
        if self.author:
            d["author"] = self.author
        d["config"] = self.config.to_json()
        d["rootfs"] = {"type": "layers", "diff_ids": list(self.diff_ids)}
        if self.history:
            d["history"] = [h.to_json() for h in self.history]
        if self.inline_cache:
            d[INLINE_CACHE_KEY] = self.inline_cache
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, data: bytes | str | dict) -> "ImageConfig":
        d = json.loads(data) if isinstance(data, (bytes, str)) else data
        if not isinstance(d, dict):
            raise ValueError(f"image config must be a JSON object, not {type(d).__name__}")
        rootfs = d.get("rootfs") or {}
        return cls(
            architecture=d.get("architecture") or "",
            os=d.get("os") or "",
            variant=d.get("variant") or "",
            created=d.get("created") or None,
            author=d.get("author") or "",
            config=RuntimeConfig.from_json(d.get("config")),
            diff_ids=_tuple(rootfs.get("diff_ids")),
            history=tuple(HistoryEntry.from_json(h) for h in d.get("history") or ()),
            inline_cache=d.get(INLINE_CACHE_KEY) if isinstance(d.get(INLINE_CACHE_KEY), str) else "",
        )

    def with_config(self, **changes: Any) -> "ImageConfig":
        return records.replace(self, config=records.replace(self.config, **changes))
