"""Snapshot store: unpacked layers by chain ID, scratch upper dirs, commits shared between processes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

from builder.errors import StoreError
from builder.snapshot.layers import LayerError
from builder.snapshot.snapshots import SnapshotStore

CHAIN = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def leftovers(root) -> list[str]:
    return os.listdir(os.path.join(root, "snapshots.tmp"))


@pytest.fixture
def store(tmp_path) -> SnapshotStore:
    return SnapshotStore(str(tmp_path / "store"))


def test_paths_are_short_and_keyed_by_chain_id(store, tmp_path):
    path = store.path(CHAIN)
    assert path == os.path.join(str(tmp_path / "store"), "snapshots", "ab" * 16)
    assert store.path(OTHER) != path
    assert not store.has(CHAIN)
    with pytest.raises(StoreError, match="chain ID"):
        store.path("sha256:nothex")


def test_ensure_unpacks_once(store, tmp_path):
    opened = []

    def open_layer():
        opened.append(1)
        return io.BytesIO(layer_tar({"etc/hello": b"world"}))

    path = store.ensure(CHAIN, open_layer)
    assert path == store.path(CHAIN) and store.has(CHAIN)
    with open(os.path.join(path, "etc/hello"), "rb") as f:
        assert f.read() == b"world"
    assert store.ensure(CHAIN, open_layer) == path
    assert len(opened) == 1
    assert leftovers(store.root) == []


def test_failed_ensure_leaves_nothing(store):
    def corrupt():
        return io.BytesIO(b"\x1f\x8b" + b"garbage" * 100)

    with pytest.raises(LayerError):
        store.ensure(CHAIN, corrupt)

    def hostile():
        return io.BytesIO(layer_tar({"../escape": b"x"}))

    with pytest.raises(LayerError):
        store.ensure(CHAIN, hostile)

    def unreadable():
        raise OSError("blob vanished")

    with pytest.raises(OSError, match="vanished"):
        store.ensure(CHAIN, unreadable)
    assert not store.has(CHAIN)
    assert leftovers(store.root) == []


def test_scratch_is_removed_unless_committed(store):
    with store.scratch() as scratch:
        assert os.path.isdir(scratch.upperdir) and os.path.isdir(scratch.workdir)
        assert os.stat(scratch.upperdir).st_dev == os.stat(store.root).st_dev
        assert oct(os.stat(scratch.upperdir).st_mode & 0o777) == oct(0o755)
        with open(os.path.join(scratch.upperdir, "f"), "w") as f:
            f.write("discarded")
    assert not os.path.exists(scratch.upperdir)
    assert leftovers(store.root) == []

    with pytest.raises(RuntimeError):
        with store.scratch() as scratch:
            raise RuntimeError("step failed")
    assert leftovers(store.root) == []


def test_commit_moves_the_upper_dir_and_keeps_the_first(store):
    with store.scratch() as scratch:
        with open(os.path.join(scratch.upperdir, "who"), "w") as f:
            f.write("first")
        upper_ino = os.stat(scratch.upperdir).st_ino
        path = store.commit(scratch, CHAIN)
    assert path == store.path(CHAIN) and os.stat(path).st_ino == upper_ino  # renamed, not copied
    with store.scratch() as scratch:
        with open(os.path.join(scratch.upperdir, "who"), "w") as f:
            f.write("second")
        assert store.commit(scratch, CHAIN) == path
    with open(os.path.join(path, "who")) as f:
        assert f.read() == "first"
    assert leftovers(store.root) == []


def test_remove(store):
    store.ensure(CHAIN, lambda: io.BytesIO(layer_tar({"f": b"x"})))
    store.ensure(OTHER, lambda: io.BytesIO(layer_tar({"g": b"y"})))
    store.remove(CHAIN)
    store.remove(CHAIN)  # removing what is gone is not an error
    assert not store.has(CHAIN) and store.has(OTHER)
    assert leftovers(store.root) == []


def _run_children(code: str, args: list[list[str]]) -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *a], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in args]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


COMMIT_RACE = """
    import os, sys, time
    from builder.snapshot.snapshots import SnapshotStore
    root, me, go, chains = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    store = SnapshotStore(root)
    scratches = []
    for chain in chains:
        s = store.scratch()
        for i in range(50):
            with open(os.path.join(s.upperdir, f"{me}-{i}"), "w") as f:
                f.write(me)
        scratches.append(s)
    while not os.path.exists(go):
        time.sleep(0.001)
    for chain, s in zip(chains, scratches):
        with s:
            store.commit(s, chain)
"""


def test_concurrent_commits_of_one_chain_id_keep_exactly_one(store, tmp_path):
    chains = ["sha256:" + f"{i:02x}" * 32 for i in range(8)]
    go = str(tmp_path / "go")
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(COMMIT_RACE), store.root, me, go, *chains],
                              stderr=subprocess.PIPE, text=True) for me in ("p1", "p2")]
    try:
        # Both children have made their scratch dirs (or failed) before the start signal.
        for _ in range(3000):
            if len(leftovers(store.root)) >= 2 * len(chains) or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.01)
        open(go, "w").close()
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for chain in chains:
        names = os.listdir(store.path(chain))
        owners = {n.split("-")[0] for n in names}
        assert len(owners) == 1 and len(names) == 50, (chain, sorted(names)[:5])
    assert leftovers(store.root) == []


ENSURE_RACE = """
    import io, os, sys, tarfile
    from builder.snapshot.snapshots import SnapshotStore
    root, chain, log = sys.argv[1:4]
    def open_layer():
        with open(log, "a") as f:
            f.write("opened\\n")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for i in range(300):
                info = tarfile.TarInfo(f"d/{i}")
                info.size = 4096
                tf.addfile(info, io.BytesIO(bytes(4096)))
        buf.seek(0)
        return buf
    print(SnapshotStore(root).ensure(chain, open_layer))
"""


def test_concurrent_ensure_unpacks_once(store, tmp_path):
    log = str(tmp_path / "opened.log")
    outs = _run_children(ENSURE_RACE, [[store.root, CHAIN, log]] * 3)
    assert {o.strip() for o in outs} == {store.path(CHAIN)}
    with open(log) as f:
        assert f.read().count("opened") == 1
    assert len(os.listdir(os.path.join(store.path(CHAIN), "d"))) == 300
    assert leftovers(store.root) == []


KILLED = """
    import os, signal, sys
    from builder.snapshot.snapshots import SnapshotStore
    s = SnapshotStore(sys.argv[1]).scratch()
    open(os.path.join(s.upperdir, "half-done"), "w").close()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_clean_stale_removes_only_dead_owners_dirs(store):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED), store.root])
    assert proc.returncode == -signal.SIGKILL
    assert len(leftovers(store.root)) == 1
    with store.scratch() as live:
        store.clean_stale()
        assert os.path.isdir(live.upperdir)
        assert leftovers(store.root) == [os.path.basename(os.path.dirname(live.upperdir))]
    assert leftovers(store.root) == []


def test_a_flush_started_early_is_done_before_sync_returns(tmp_path, monkeypatch):
    """Store.flush_soon writes the root's data back on a thread; Store.sync waits for it, then
    syncs once more (for what came after), so nothing is left running or unsynced."""
    import threading

    import builder.plumbing.files as files
    from builder.store import Store

    synced = []
    real = files.sync_filesystem
    gate = threading.Event()

    def slow_sync(path):
        gate.wait(5)
        synced.append((threading.current_thread().name, path))
        real(path)

    monkeypatch.setattr(files, "sync_filesystem", slow_sync)
    store = Store(str(tmp_path / "root"))
    store.flush_soon()
    store.flush_soon()   # one already under way: not a second thread
    assert [t.name for t in threading.enumerate()].count("build-image-flush") == 1
    gate.set()
    store.sync()
    assert [name for name, _ in synced] == ["build-image-flush", threading.current_thread().name]
    assert all(path == store.root for _, path in synced)
    assert "build-image-flush" not in [t.name for t in threading.enumerate()]
