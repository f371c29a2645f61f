"""file: COPY, ADD and WORKDIR's mkdir. Keyed on the op's definition, the root's key and, per copy
action, what it reads: from the context the checksum of the selected paths, else the source's key."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence

from builder.llb import CopyAction, MkdirAction
from builder.plumbing.linux import MNT_DETACH, umount2
from builder.solver.copyreuse import CopyRun, StaleCopy, earlier_run, records_dir
from builder.solver.fileops import apply_copy, apply_mkdir

from .base import CopySource, LayerOp, Result, digest_key


class FileSolverOp(LayerOp):
    def cache_key(self) -> str:
        content = [self.content_key(action.source, _selector(action))
                   for action in self.op.actions if isinstance(action, CopyAction)]
        return digest_key(self.op.definition(), self.input_key(0), content)

    def facts(self) -> dict:
        reads = [self.read_facts(action.source, _selector(action))
                 for action in self.op.actions if isinstance(action, CopyAction)]
        return {"reads": [r for r in reads if r is not None]}

    def exec(self, inputs: Sequence[Result]) -> Result:
        parent = inputs[0]
        run: CopyRun | None = None

        def change(active, reuse: bool) -> None:
            nonlocal run
            run = self._change(active.mount, parent, reuse)

        try:
            result = self.make_layer(parent, lambda active: change(active, True))
        except StaleCopy:
            self._log("the last run's files do not map onto this one's: copying all anew")
            result = self.make_layer(parent, lambda active: change(active, False))
        if run is not None:
            from builder.snapshot.layers import chain_ids

            run.save(records_dir(self.state.store.cache_root), chain_ids([l.diff_id for l in result.layers])[-1])
            if run.kept:
                self._log(f"kept {run.kept} unchanged files of the last run, copied {run.copied}")
        return result

    def _log(self, text: str) -> None:
        from builder import events

        self.state.progress(events.Log(self.vertex.digest, text))

    def apply(self, rootfs) -> None:
        self._change(rootfs, None, False)

    def _change(self, rootfs, parent: Result | None, reuse: bool) -> CopyRun | None:
        """Apply the actions over ROOTFS; with PARENT, as a CopyRun that records what it wrote,
        and with REUSE also keeps the unchanged files of the last run (copyreuse.py)."""
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
            run = self._copy_run(rootfs, parent, sources, reuse) if parent is not None else None
            if run is not None:
                run.plant(rootfs.upperdir)
            view = state.store.snapshotter.view
            state.executor.run_in_rootfs(
                rootfs, lambda merged: _apply_file_actions(merged, self.op, sources, state.store.run_dir, view, run))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if run is not None and not run.complete():
            raise StaleCopy(self.name)
        return run

    def _copy_run(self, rootfs, parent: Result, sources: dict[int, CopySource], reuse: bool) -> CopyRun | None:
        """A CopyRun if this op can take part: copies only (and mkdirs), every source with entry
        digests (the context), the overlay snapshotter (a committed snapshot is the change)."""
        store = self.state.store
        if (not store.snapshotter.commits_layer_content or rootfs.upperdir is None or not sources
                or any(s.entry_digest is None for s in sources.values())
                or any(isinstance(a, CopyAction) and a.extract_archives for a in self.op.actions)):
            return None
        from builder.snapshot.layers import chain_ids

        parent_chain = chain_ids([l.diff_id for l in parent.layers])[-1] if parent.layers else None
        key = digest_key("copy-reuse", self.op.definition(), parent_chain,
                         {str(i): [self.vertex.inputs[i].op.definition(), [str(r) for r in s.rules]]
                          for i, s in sorted(sources.items())})
        earlier = None
        if reuse and not self.state.ignores_cache(self.vertex):
            earlier = earlier_run(records_dir(store.cache_root), key, store.snapshotter.change_dir)
        return CopyRun(key, {i: s.entry_digest for i, s in sources.items()}, earlier)


def _selector(action: CopyAction) -> tuple[str, ...]:
    """The paths a COPY reads. For --parents the files are those below the pivot that the pattern
    selects: the same as the path without the "/./" pivot, except with '**' (which only
    patternmatcher knows), where the whole pivot counts."""
    paths = action.paths
    if action.parents:
        paths = tuple(p.partition("/./")[0] or "/" if "**" in p else p.replace("/./", "/") for p in paths)
    return paths


def _apply_file_actions(merged: str, op, sources: dict[int, CopySource], scratch_dir: str, view,
                        run: CopyRun | None = None) -> None:
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
                           reset_owner=source.reset_owner,
                           files=None if run is None else run.for_action(action.source, merged, mounted[action.source]))
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
