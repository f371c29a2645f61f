"""file: COPY, ADD and WORKDIR's mkdir. Keyed on the op's definition, the root's key and, per copy
action, what it reads: from the context the checksum of the selected paths, else the source's key."""

from __future__ import annotations

import os
import shutil
import tempfile

from builder.llb import CopyAction, MkdirAction
from builder.plumbing.linux import MNT_DETACH, umount2
from builder.solver.fileops import apply_copy, apply_mkdir

from .base import CopySource, LayerOp, digest_key


class FileSolverOp(LayerOp):
    def cache_key(self) -> str:
        content = [self.content_key(action.source, _selector(action))
                   for action in self.op.actions if isinstance(action, CopyAction)]
        return digest_key(self.op.definition(), self.input_key(0), content)

    def facts(self) -> dict:
        reads = [self.read_facts(action.source, _selector(action))
                 for action in self.op.actions if isinstance(action, CopyAction)]
        return {"reads": [r for r in reads if r is not None]}

    def apply(self, rootfs) -> None:
        state = self.state
        sources: dict[int, CopySource] = {}
        scratch = tempfile.mkdtemp(prefix="inline-", dir=state.store.run_dir)
        try:
            for action in self.op.actions:
                if not isinstance(action, CopyAction) or action.source in sources:
                    continue
                source = self.vertex.inputs[action.source]
                sources[action.source] = (CopySource(()) if source is None
                                          else state.op(source).copy_source(scratch, action.source))
            view = state.store.snapshotter.view
            state.executor.run_in_rootfs(
                rootfs, lambda merged: _apply_file_actions(merged, self.op, sources, state.store.run_dir, view))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _selector(action: CopyAction) -> tuple[str, ...]:
    """The paths a COPY reads. For --parents the files are those below the pivot that the pattern
    selects: the same as the path without the "/./" pivot, except with '**' (which only
    patternmatcher knows), where the whole pivot counts."""
    paths = action.paths
    if action.parents:
        paths = tuple(p.partition("/./")[0] or "/" if "**" in p else p.replace("/./", "/") for p in paths)
    return paths


def _apply_file_actions(merged: str, op, sources: dict[int, CopySource], scratch_dir: str, view) -> None:
    """Runs in the step's private mount namespace (see Executor.run_in_rootfs): other stages'
    filesystems are mounted read-only for the copy and unmounted before returning."""
    mount_root = tempfile.mkdtemp(prefix="src-", dir=scratch_dir)
    mounted: dict[int, str] = {}
    try:
        for index, source in sources.items():
            if isinstance(source.tree, str):
                mounted[index] = source.tree
            else:
                mounted[index] = os.path.join(mount_root, str(index))
                _mount_layers(view(source.tree), mounted[index], mount_root)
        for action in op.actions:
            if isinstance(action, MkdirAction):
                apply_mkdir(merged, action)
            else:
                source = sources[action.source]
                apply_copy(merged, mounted[action.source], action, rules=source.rules,
                           reset_owner=source.reset_owner)
    finally:
        # Not os.path.ismount: a bind of a directory on the same filesystem does not look like one.
        for index, path in mounted.items():
            if sources[index].tree and not isinstance(sources[index].tree, str):
                try:
                    umount2(path, MNT_DETACH)
                except OSError:
                    pass  # the mount failed before it was made
        shutil.rmtree(mount_root, ignore_errors=True)


def _mount_layers(view, target: str, mount_root: str) -> str:
    """A read-only VIEW of a stage's filesystem (a snapshotter's mount) at TARGET."""
    from builder.plumbing.records import replace

    from builder.snapshot.snapshotter import BIND

    os.makedirs(target)
    if not view.lowerdirs:
        return target  # an empty stage: the empty directory
    if len(view.lowerdirs) == 1:
        view = replace(view, kind=BIND)  # one tree: a read-only bind is enough here
    empty = os.path.join(mount_root, "empty")
    os.makedirs(empty, exist_ok=True)
    view.attach(target, empty)
    return target
