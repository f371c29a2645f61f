"""exec: RUN. Keyed on the op's definition, the root's key and each mount's source (a bind of the
context by the checksum of what it selects); cache contents, secrets and agents are never keyed."""

from __future__ import annotations

import contextlib
import os
from collections import deque

from builder.errors import ExecutionError, SolveError
from builder.llb.ops import BindMountSpec
from builder import events
from builder.solver.mounts import MountInput, RunMounts

from .base import LayerOp, digest_key

_TAIL_LINES = 10   # output lines quoted when the process fails


class ExecSolverOp(LayerOp):
    def cache_key(self) -> str:
        return digest_key(self.op.definition(), self.input_key(0), *self._mount_keys())

    def _mount_keys(self) -> list[str | None]:
        keys: list[str | None] = []
        for spec in self.op.mounts:
            index = getattr(spec, "source", None)
            if index is None:
                keys.append(None)
            elif isinstance(spec, BindMountSpec):
                keys.append(self.content_key(index, (spec.path,)))
            else:
                keys.append(self.input_key(index))
        return keys

    def facts(self) -> dict:
        """The environment the RUN sees (secrets are mounted, never in it), its other settings,
        and the context files its bind mounts read."""
        op = self.op
        settings = {"WORKDIR": op.cwd, "USER": op.user, "network": op.network, "hostname": op.hostname,
                    "add-host": " ".join(f"{n}:{a}" for n, a in op.extra_hosts), "shm-size": str(op.shm_size),
                    "ulimit": " ".join(f"{n}={s}:{h}" for n, s, h in op.ulimits)}
        reads = [self.read_facts(spec.source, (spec.path,)) for spec in op.mounts
                 if isinstance(spec, BindMountSpec) and spec.source is not None]
        return {"env": list(op.env), "settings": settings, "reads": [r for r in reads if r is not None]}

    def apply(self, rootfs) -> None:
        from builder.executor import ProcessSpec

        op, digest = self.op, self.vertex.digest
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        partial = bytearray()

        def output(fd: int, chunk: bytes) -> None:
            self.state.progress(events.Output(digest, chunk))
            partial.extend(chunk)
            *lines, rest = partial.split(b"\n")
            for line in lines:
                tail.append(line.decode(errors="replace"))
            partial[:] = rest

        with contextlib.ExitStack() as held:
            try:
                prepared = held.enter_context(self._run_mounts().prepare(op.mounts, self._mount_inputs()))
            except SolveError as error:
                raise SolveError(f"{self.name}: {error}") from None
            # The op's network mode and hosts go to the executor unchanged: they are in the key already.
            spec = ProcessSpec(args=op.args, env=op.env + prepared.env, cwd=op.cwd, user=op.user,
                               hostname=op.hostname, network=op.network, extra_hosts=op.extra_hosts,
                               shm_size=op.shm_size, ulimits=op.ulimits)
            code = self.state.executor.run(rootfs, spec, prepared.mounts, output=output)
        if partial:
            tail.append(partial.decode(errors="replace"))
        if code != 0:
            raise ExecutionError(" ".join(op.args), code, list(tail), step=self.name)

    def _run_mounts(self) -> RunMounts:
        from builder.cache.cache_mounts import CacheMountStore

        state = self.state
        return RunMounts(snapshots=state.store.snapshotter, executor=state.executor,
                         caches=CacheMountStore(state.store.cache_mounts_dir),
                         secrets=state.secrets, ssh=state.ssh, cancelled=state.cancelled)

    def _mount_inputs(self) -> list[MountInput]:
        """What each vertex input is at run time, by input index (0, the root, is unused)."""
        return [MountInput(None)] + [MountInput(None) if source is None else self.state.op(source).mount_input()
                                     for source in self.vertex.inputs[1:]]
