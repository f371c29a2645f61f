"""RUN --mount: BuildKit's CSV syntax, as its instructions/commands_runmount.go parses it.

`parse_mount` reads one ``--mount`` value (CSV fields, ``type=bind`` by default, keys and their
errors as BuildKit words them) into a `RunMount`; `secret_defaults` and `ssh_defaults` fill in
what BuildKit's frontend fills in for those types. The converter turns the result into the
mount specs of an ExecOp; what a mount does at run time is the solver's (builder/solver/mounts.py).
"""

from __future__ import annotations

import csv
import os
import re

from builder.grammar.flags import FlagSyntaxError
from builder.plumbing.records import dataclass, replace

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
SECRETS_DIR = "/run/secrets"
SSH_AGENT_TARGET = "/run/buildkit/ssh_agent.{}"

_TRUE = ("1", "t", "T", "TRUE", "true", "True")      # Go's strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_RAM_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")


class MountSyntaxError(FlagSyntaxError):
    """A malformed --mount value; the converter adds the Dockerfile line."""


@dataclass(frozen=True)
class RunMount:
    """One --mount value as written, BuildKit's read-only default applied; the converter fills
    in the rest of the defaults (cache id, secret target, ...)."""

    type: str = "bind"
    target: str = ""
    source: str = ""
    from_: str = ""
    readonly: bool = True
    id: str = ""
    sharing: str = ""
    required: bool = False
    size: int = 0
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None


def parse_mount(value: str) -> RunMount:
    """Parse `type=cache,target=/root/.cache,sharing=locked` (variables already expanded)."""
    try:
        fields = next(csv.reader([value], strict=True), [])
    except csv.Error as exc:
        raise MountSyntaxError(f"failed to parse csv mounts: {exc}") from None
    m: dict = {"type": "bind"}
    readonly: bool | None = None
    for field in fields:
        key, eq, val = field.partition("=")
        key = key.lower()
        if not eq:
            if key in ("readonly", "ro"):
                readonly = True
            elif key in ("readwrite", "rw"):
                readonly = False
            elif key == "required":
                _require_type(m, key, ("secret", "ssh"))
                m["required"] = True
            else:
                raise MountSyntaxError(f"invalid field '{field}' must be a key=value pair")
            continue
        if key == "type":
            if val.lower() not in MOUNT_TYPES:
                raise MountSyntaxError(f'unsupported mount type "{val}"')
            m["type"] = val.lower()
        elif key == "from":
            m["from_"] = val
        elif key in ("source", "src"):
            m["source"] = val
        elif key in ("target", "dst", "destination"):
            m["target"] = val
        elif key in ("readonly", "ro"):
            readonly = _parse_bool(key, val)
        elif key in ("readwrite", "rw"):
            readonly = not _parse_bool(key, val)
        elif key == "required":
            _require_type(m, key, ("secret", "ssh"))
            m["required"] = _parse_bool(key, val)
        elif key == "size":
            _require_type(m, key, ("tmpfs",))
            m["size"] = _parse_ram_size(key, val)
        elif key == "id":
            m["id"] = val
        elif key == "sharing":
            if val.lower() not in SHARING_MODES:
                raise MountSyntaxError(f'unsupported sharing value "{val}"')
            m["sharing"] = val.lower()
        elif key == "mode":
            m["mode"] = _parse_uint(key, val, 8)
        elif key in ("uid", "gid"):
            m[key] = _parse_uint(key, val, 10)
        elif key == "env":
            m["env"] = val
        else:
            raise MountSyntaxError(f"unexpected key '{key}' in '{field}'")
    mount = RunMount(**m, readonly=readonly if readonly is not None else m["type"] not in ("cache", "tmpfs"))
    _validate(mount)
    return mount


def _require_type(m: dict, key: str, types: tuple[str, ...]) -> None:
    if m["type"] not in types:
        raise MountSyntaxError(f"unexpected key '{key}' for mount type '{m['type']}'")


def _parse_bool(key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise MountSyntaxError(f"invalid value for {key}: {value}")


def _parse_uint(key: str, value: str, base: int) -> int:
    try:
        number = int(value, base)
    except ValueError:
        number = -1
    if number < 0 or number >= 1 << 32 or not value.isalnum():
        raise MountSyntaxError(f"invalid value {value} for {key}")
    return number


def _parse_ram_size(key: str, value: str) -> int:
    """docker/go-units RAMInBytes: "64m", "1.5GiB", "100" (binary multiples)."""
    match = _RAM_SIZE.match(value)
    if match is None:
        raise MountSyntaxError(f"invalid value for {key}: {value}")
    try:
        number = float(match.group(1))
    except ValueError:
        raise MountSyntaxError(f"invalid value for {key}: {value}") from None
    power = "bkmgtp".index((match.group(2) or "b").lower())
    return int(number * 1024 ** power)


def _validate(m: RunMount) -> None:
    if m.type not in ("secret", "ssh", "cache"):
        for name in ("mode", "uid", "gid"):
            if getattr(m, name) is not None:
                raise MountSyntaxError(f'{name} not allowed for "{m.type}" type mounts')
    if m.type == "secret":
        if m.from_:
            raise MountSyntaxError("secret mount should not have a from")
        if m.sharing:
            raise MountSyntaxError("secret mount should not define sharing")
        if not (m.source or m.target or m.id or m.env is not None):
            raise MountSyntaxError("invalid secret mount. one of source, target required")
        if m.source and m.id:
            raise MountSyntaxError("both source and id can't be set")
    if m.type == "ssh" and m.source:
        raise MountSyntaxError("ssh does not support source")
    if m.sharing and m.type != "cache":
        raise MountSyntaxError(f"invalid cache sharing set for {m.type} mount")
    if m.env is not None and m.type != "secret":
        raise MountSyntaxError(f"unexpected key 'env' for mount type '{m.type}'")


def secret_defaults(m: RunMount) -> RunMount:
    """BuildKit's defaults: the id is `source`, `id` or the target's base name; the file goes to
    /run/secrets/<id> unless only `env` is asked for; mode 0400, owner 0:0."""
    secret_id = m.source or m.id or os.path.basename(m.target.rstrip("/"))
    if not secret_id:
        raise MountSyntaxError("one of source, target required")
    target = m.target
    if m.env is None and not target:
        target = f"{SECRETS_DIR}/{os.path.basename(secret_id)}"
    return replace(m, id=secret_id, target=target, mode=0o400 if m.mode is None else m.mode,
                   uid=m.uid or 0, gid=m.gid or 0)


def ssh_defaults(m: RunMount, index: int) -> RunMount:
    """INDEX counts the ssh mounts before this one: /run/buildkit/ssh_agent.<index> by default,
    the id `default`, mode 0600, owner 0:0."""
    return replace(m, id=m.id or "default", target=m.target or SSH_AGENT_TARGET.format(index),
                   mode=0o600 if m.mode is None else m.mode, uid=m.uid or 0, gid=m.gid or 0)
