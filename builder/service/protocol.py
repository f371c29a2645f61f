"""The wire format of `build-image serve`: JSON messages and byte streams over HTTP/1.1.

A request is one POST (or GET) whose body, sent with `Transfer-Encoding: chunked`, is one JSON line
(the request document) followed by raw bytes: the build context as a tar, or a command's stdin.
A response is `200` and a body that ends when the connection closes (`Connection: close`), made of
frames: a 4-byte big-endian payload length, a 1-byte channel, the payload.

    channel 0  a JSON message: {"type": "event"|"result"|"error"|"output"|"exit", ...}
    channel 1  bytes for the client's stdout (an image command's output)
    channel 2  bytes for the client's stderr
    channel 3  bytes of the output file that the last "output" message announced
    channel 4  ssh-agent bytes: a 4-byte connection number, then the data (both ways; sshrelay.py)

Nothing here is pickled: events and errors cross as JSON, bytes inside them as base64. This module
is all the client imports of the service, so it imports nothing heavy.
"""

from __future__ import annotations

import base64
import json
import struct

MESSAGE, STDOUT, STDERR, FILE, SSH = 0, 1, 2, 3, 4
_HEADER = struct.Struct(">IB")
MAX_FRAME = 16 << 20
MAX_REQUEST_LINE = 4 << 20
DEFAULT_SOCKET = "unix:///run/build-image/build-image.sock"
API = "/v1"


class ProtocolError(Exception):
    """The other end broke the protocol or went away mid-frame."""


def frame(channel: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), channel) + payload


def message(kind: str, **fields) -> bytes:
    return frame(MESSAGE, json.dumps({"type": kind, **fields}, separators=(",", ":")).encode())


class FrameReader:
    """Frames from a READ(n) function (a socket's or a file's); None at a clean end of stream."""

    def __init__(self, read):
        self._read = read

    def _exactly(self, size: int, at_start: bool = False) -> bytes | None:
        chunks, left = [], size
        while left:
            chunk = self._read(left)
            if not chunk:
                if at_start and left == size:
                    return None
                raise ProtocolError("the connection closed in the middle of a message")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def next(self) -> tuple[int, bytes] | None:
        header = self._exactly(_HEADER.size, at_start=True)
        if header is None:
            return None
        size, channel = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ProtocolError(f"a frame of {size} bytes is over the limit")
        return channel, self._exactly(size) if size else b""


# ---- events and errors as JSON ------------------------------------------------------------------

def encode_event(event) -> dict:
    """A builder.events event as a JSON document: its class name and fields (bytes as base64),
    whatever fields the event classes grow."""
    from builder.plumbing import records

    from builder.events import CacheMiss

    fields = {}
    for f in records.fields(event):
        value = getattr(event, f.name)
        if isinstance(value, bytes):
            value = {"b64": base64.b64encode(value).decode()}
        elif isinstance(value, CacheMiss):
            value = {"cache_miss": records.asdict(value)}
        elif isinstance(value, tuple):
            value = list(value)
        fields[f.name] = value
    return {"event": type(event).__name__, "fields": fields}


def decode_event(doc: dict):
    from builder.plumbing import records

    from builder import events

    kind = getattr(events, doc.get("event", ""), None)
    if kind not in (events.Started, events.Output, events.Log, events.Finished):
        return None
    known = {f.name for f in records.fields(kind)}
    fields = {}
    for name, value in doc.get("fields", {}).items():
        if name not in known:
            continue
        if isinstance(value, dict) and "b64" in value:
            value = base64.b64decode(value["b64"])
        elif isinstance(value, dict) and isinstance(value.get("cache_miss"), dict):
            miss = value["cache_miss"]
            value = events.CacheMiss(str(miss.get("step", "")), str(miss.get("reason", "")),
                                     miss.get("parent"), miss.get("parent_name"))
        elif isinstance(value, list):
            value = tuple(value)
        fields[name] = value
    return kind(**fields)


def encode_error(error: BaseException) -> dict:
    """A BuildError as the client needs it to print the same lines a local build prints."""
    from builder.errors import ExecutionError

    doc = {"message": str(error), "step": getattr(error, "step", ""), "source": list(getattr(error, "source", ()))}
    if isinstance(error, ExecutionError):
        doc.update(execution={"command": error.command, "exit_code": error.exit_code,
                              "last_lines": list(error.last_lines)})
    return doc


def decode_error(doc: dict):
    from builder.errors import BuildError, ExecutionError

    execution = doc.get("execution")
    if execution:
        error = ExecutionError(execution["command"], execution["exit_code"], execution.get("last_lines", ()),
                               step=doc.get("step", ""))
    else:
        error = BuildError(doc.get("message", "the server reported an error"))
        error.step = doc.get("step", "")
    error.source = tuple(doc.get("source", ()))
    return error


# ---- addresses ----------------------------------------------------------------------------------

def parse_address(text: str) -> tuple[str, str, int]:
    """`unix:///PATH` -> ("unix", PATH, 0); `tcp://HOST:PORT` -> ("tcp", HOST, PORT)."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme == "unix" and rest.startswith("/"):
        return "unix", rest, 0
    if sep and scheme == "tcp":
        host, colon, port = rest.rstrip("/").rpartition(":")
        if colon and host and port.isdigit() and 0 <= int(port) < 65536:  # 0: a listener picks one
            return "tcp", host.strip("[]"), int(port)
    raise ValueError(f'invalid server address "{text}" (use unix:///PATH or tcp://HOST:PORT)')


# ---- tar extraction that keeps modes but never writes outside its directory ----------------------

def safe_tar_filter(member, dest: str):
    """tarfile's `tar` filter for paths (nothing absolute, nothing outside DEST, not through a
    symlink), but keeping the file mode as the sender had it; devices are refused."""
    import tarfile

    if member.ischr() or member.isblk():
        raise tarfile.FilterError(f"{member.name}: device files are not accepted")
    checked = tarfile.tar_filter(member, dest)
    return checked.replace(mode=member.mode & 0o7777, deep=False) if member.mode is not None else checked
