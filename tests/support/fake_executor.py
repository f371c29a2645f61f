"""An `Executor` (builder/executor/spec.py) that starts no process and mounts nothing.

A RUN's argv names one of a few built-in programs that act on the container's view as plain
file operations, so the solver and cache logic can be tested without root in milliseconds:

    write PATH TEXT     PATH := TEXT (in the step's upper dir)
    cat SRC DEST        DEST := the content of SRC, read through the mounts, the upper dir, then
                        the layers from the top; exit 1 with a message if SRC is nowhere
    echo WORD...        WORD... on stdout
    exit N              a message on stderr, exit code N

`run_in_rootfs(rootfs, fn)` calls FN on the upper dir itself: what FN writes becomes the layer,
but the lower layers are not visible to it (there is no overlay without mounting one).

Every run is recorded in `runs` (thread-safe), and `peak` is the most runs seen at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from builder.errors import BuildError, SolveError
from builder.executor.spec import BindMount, LayeredMount, Mount, OutputCallback, ProcessSpec, RootFS, SecretFile


@dataclass(frozen=True)
class FakeRun:
    process: ProcessSpec
    mounts: tuple[Mount, ...]
    lowerdirs: tuple[str, ...]


class FakeExecutor:
    def __init__(self, *, before_run: Callable[[ProcessSpec], None] | None = None):
        """BEFORE_RUN(process), if given, is called at the start of each run (a test's hook to
        hold runs, for example at a barrier)."""
        self.runs: list[FakeRun] = []
        self.peak = 0
        self.killed = False
        self._before_run = before_run
        self._active = 0
        self._lock = threading.Lock()

    @property
    def commands(self) -> list[tuple[str, ...]]:
        with self._lock:
            return [run.process.args for run in self.runs]

    def run(self, rootfs: RootFS, process: ProcessSpec, mounts: Sequence[Mount] = (),
            output: OutputCallback | None = None) -> int:
        output = output or (lambda fd, chunk: None)
        with self._lock:
            self.runs.append(FakeRun(process, tuple(mounts), rootfs.lowerdirs))
            self._active += 1
            self.peak = max(self.peak, self._active)
        try:
            if self._before_run is not None:
                self._before_run(process)
            return _View(rootfs, tuple(mounts)).run(process.args, output)
        finally:
            with self._lock:
                self._active -= 1

    def run_in_rootfs(self, rootfs: RootFS, fn: Callable[[str], None]) -> None:
        try:
            fn(rootfs.upperdir)
        except BuildError:
            raise
        except Exception as exc:  # as the namespace executor: anything else is a SolveError
            raise SolveError(str(exc) or type(exc).__name__) from exc

    def kill_all(self) -> None:
        self.killed = True


class _View:
    """The container's file system as the fake programs see it."""

    def __init__(self, rootfs: RootFS, mounts: tuple[Mount, ...]):
        self.rootfs = rootfs
        self.mounts = mounts

    def run(self, args: tuple[str, ...], output: OutputCallback) -> int:
        program, *rest = args
        if program == "write" and len(rest) == 2:
            self._write(rest[0], rest[1].encode())
            return 0
        if program == "cat" and len(rest) == 2:
            data = self._read(rest[0])
            if data is None:
                output(2, f"cat: {rest[0]}: No such file or directory\n".encode())
                return 1
            self._write(rest[1], data)
            return 0
        if program == "echo":
            output(1, (" ".join(rest) + "\n").encode())
            return 0
        if program == "exit" and len(rest) == 1:
            output(2, f"exiting with {rest[0]}\n".encode())
            return int(rest[0])
        output(2, f"fake executor: unknown program {' '.join(args)!r}\n".encode())
        return 127

    def _write(self, path: str, data: bytes) -> None:
        host = os.path.join(self.rootfs.upperdir, path.lstrip("/"))
        os.makedirs(os.path.dirname(host), exist_ok=True)
        with open(host, "wb") as f:
            f.write(data)

    def _read(self, path: str) -> bytes | None:
        for mount in sorted(self.mounts, key=lambda m: len(m.target), reverse=True):
            rel = os.path.relpath(path, mount.target)
            if rel.startswith(".."):
                continue
            if isinstance(mount, SecretFile):
                return mount.data if rel == "." else None
            if isinstance(mount, BindMount):
                return _read_file(os.path.join(mount.source, rel))
            if isinstance(mount, LayeredMount):
                rel = os.path.normpath(os.path.join(mount.subpath.lstrip("/"), rel))
                return _first_file((mount.upperdir,) if mount.upperdir else (), mount.lowerdirs, rel)
        return _first_file((self.rootfs.upperdir,), self.rootfs.lowerdirs, path.lstrip("/"))


def _first_file(uppers: tuple[str, ...], lowerdirs: tuple[str, ...], rel: str) -> bytes | None:
    for directory in (*uppers, *reversed(lowerdirs)):
        data = _read_file(os.path.join(directory, rel))
        if data is not None:
            return data
    return None


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
