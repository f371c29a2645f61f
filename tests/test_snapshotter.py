"""The Snapshotter interface, run against both implementations (overlay and naive): prepare a
snapshot over a parent, write in its mount, archive its diff, commit, view, remove, usage.

Each case mounts inside a thread's private mount namespace, so nothing is ever visible to the host.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap

import pytest

from builder.plumbing import linux
from builder.snapshot.layers import chain_ids, write_layer
from builder.snapshot.snapshotter import NaiveSnapshotter, OverlaySnapshotter, make_snapshotter
from builder.cache.blobs import MemoryBlobStore
from tests.support.mountns import in_private_mount_namespace

pytestmark = [pytest.mark.root]


@pytest.fixture(params=["overlay", "naive"])
def snapshotter(request, tmp_path):
    if request.param == "overlay":
        request.applymarker(pytest.mark.overlay)
    return make_snapshotter(request.param, str(tmp_path / "store"))


def mounted(mount, tmp_path, fn):
    """FN(merged dir) with MOUNT attached there, in a private mount namespace."""
    target, empty = tmp_path / "merged", tmp_path / "empty"
    target.mkdir(exist_ok=True)
    empty.mkdir(exist_ok=True)

    def body():
        mount.attach(str(target), str(empty))
        try:
            return fn(str(target))
        finally:
            linux.umount2(str(target), linux.MNT_DETACH)
    return in_private_mount_namespace(body)


def layer_tar(files: dict[str, bytes | None]) -> bytes:
    """A layer: a file per name (None: a directory); `.wh.` names are whiteouts as in OCI."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Chain:
    """Layers as blobs in memory, and their chain IDs: what the solver hands `lowerdirs`."""

    def __init__(self):
        self.blobs = MemoryBlobStore()
        self.diff_ids: list[str] = []

    def add_tar(self, data: bytes) -> None:
        self.diff_ids.append(self.blobs.put_bytes(data))

    def add_layer(self, layer) -> None:
        self.diff_ids.append(layer.diff_id)

    def entries(self):
        return [(chain, lambda d=d: self.blobs.open(d)) for chain, d in zip(chain_ids(self.diff_ids), self.diff_ids)]

    @property
    def top(self) -> str:
        return chain_ids(self.diff_ids)[-1]


def step(snapshotter, chain: Chain, tmp_path, change) -> list[tuple[str, bytes, str]]:
    """Run CHANGE(merged root) in a snapshot prepared over CHAIN, archive and commit it; the
    layer's entries as (name, type, linkname)."""
    with snapshotter.prepare(snapshotter.lowerdirs(chain.entries())) as active:
        mounted(active.mount, tmp_path, change)
        layer = write_layer(active.diff_dir(), chain.blobs)
        chain.add_layer(layer)
        snapshotter.commit(active, chain.top)
    with tarfile.open(fileobj=chain.blobs.open(layer.digest)) as tf:
        return [(m.name, m.type, m.linkname) for m in tf.getmembers()]


def read_tree(snapshotter, chain: Chain, tmp_path) -> dict[str, str]:
    """Every file under the view of CHAIN: relative path -> content (directories as '/')."""
    def walk(root: str) -> dict[str, str]:
        found = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                found[os.path.relpath(os.path.join(dirpath, name), root)] = "/"
            for name in filenames:
                with open(os.path.join(dirpath, name)) as f:
                    found[os.path.relpath(os.path.join(dirpath, name), root)] = f.read()
        return found
    view = snapshotter.view(snapshotter.lowerdirs(chain.entries()))
    return mounted(view, tmp_path, walk)


def test_changes_deletions_and_hard_links_become_the_same_layer_entries(snapshotter, tmp_path):
    chain = Chain()
    chain.add_tar(layer_tar({"etc": None, "etc/keep": b"k", "etc/gone": b"g", "var": None,
                             "var/lib": None, "var/lib/old": b"o", "hi": b"hi"}))

    def change(root):
        with open(f"{root}/etc/new", "w") as f:
            f.write("n")
        os.unlink(f"{root}/etc/gone")
        os.link(f"{root}/hi", f"{root}/hi2")
        subprocess.run(["rm", "-rf", f"{root}/var/lib"], check=True)

    entries = step(snapshotter, chain, tmp_path, change)
    assert entries == [
        ("etc", tarfile.DIRTYPE, ""), ("etc/.wh.gone", tarfile.REGTYPE, ""), ("etc/new", tarfile.REGTYPE, ""),
        ("hi", tarfile.REGTYPE, ""), ("hi2", tarfile.LNKTYPE, "hi"),
        ("var", tarfile.DIRTYPE, ""), ("var/.wh.lib", tarfile.REGTYPE, ""),
    ]
    assert read_tree(snapshotter, chain, tmp_path) == {
        "etc": "/", "etc/keep": "k", "etc/new": "n", "hi": "hi", "hi2": "hi", "var": "/"}


def test_an_unchanged_step_makes_an_empty_layer(snapshotter, tmp_path):
    chain = Chain()
    chain.add_tar(layer_tar({"a": b"1", "d": None, "d/b": b"2"}))
    assert step(snapshotter, chain, tmp_path, lambda root: os.listdir(root)) == []


def test_a_layer_over_a_removed_directory_is_opaque_where_overlay_marks_it(snapshotter, tmp_path):
    chain = Chain()
    chain.add_tar(layer_tar({"cache": None, "cache/old": b"o"}))

    def replace_dir(root):
        subprocess.run(["rm", "-rf", f"{root}/cache"], check=True)
        os.mkdir(f"{root}/cache")
        with open(f"{root}/cache/fresh", "w") as f:
            f.write("f")

    entries = [name for name, _, _ in step(snapshotter, chain, tmp_path, replace_dir)]
    # overlay marks the new directory opaque; the naive differ whites out what went (in the sorted
    # place of the name it hides): both hide "old"
    expected = {"overlay": ["cache", "cache/.wh..wh..opq", "cache/fresh"],
                "naive": ["cache", "cache/fresh", "cache/.wh.old"]}
    assert entries == expected[snapshotter.name]
    assert read_tree(snapshotter, chain, tmp_path) == {"cache": "/", "cache/fresh": "f"}


def test_many_layers_stay_visible_and_writable(snapshotter, tmp_path):
    chain = Chain()
    for i in range(135):
        chain.add_tar(layer_tar({f"f{i:03}": str(i).encode()}))

    def write(root):
        assert len([n for n in os.listdir(root) if n.startswith("f")]) == 135
        with open(f"{root}/top", "w") as f:
            f.write("t")

    assert step(snapshotter, chain, tmp_path, write) == [("top", tarfile.REGTYPE, "")]
    tree = read_tree(snapshotter, chain, tmp_path)
    assert tree["f000"] == "0" and tree["f134"] == "134" and tree["top"] == "t"


def test_writable_view_changes_are_thrown_away(snapshotter, tmp_path):
    chain = Chain()
    chain.add_tar(layer_tar({"a": b"1"}))
    parent = snapshotter.lowerdirs(chain.entries())

    def scribble(root):
        with open(f"{root}/a", "w") as f:
            f.write("changed")
    with snapshotter.writable(parent) as mount:
        mounted(mount, tmp_path, scribble)
    assert read_tree(snapshotter, chain, tmp_path) == {"a": "1"}


def test_view_is_read_only(snapshotter, tmp_path):
    chain = Chain()
    chain.add_tar(layer_tar({"a": b"1"}))

    def write(root):
        with pytest.raises(OSError):
            open(f"{root}/b", "w")
    mounted(snapshotter.view(snapshotter.lowerdirs(chain.entries())), tmp_path, write)


def test_remove_and_usage(snapshotter, tmp_path):
    chain = Chain()
    chain.add_tar(layer_tar({"big": b"x" * 100_000}))   # not zeros: unpacking makes holes of those
    snapshotter.lowerdirs(chain.entries())
    assert snapshotter.usage(chain.top) >= 100_000
    snapshotter.remove(chain.top)
    assert snapshotter.usage(chain.top) == 0 and not snapshotter.store.has(chain.top)


KILLED_MID_COMMIT = """
    import os, signal, sys
    from builder.snapshot.snapshotter import make_snapshotter
    snapshotter = make_snapshotter(sys.argv[1], sys.argv[2])
    active = snapshotter.prepare(())
    open(os.path.join(active.mount.upperdir, "half-done"), "w").close()
    active.diff_dir()
    os.kill(os.getpid(), signal.SIGKILL)   # before commit's rename: nothing may look committed
"""


def test_a_kill_before_commit_leaves_only_a_stale_work_dir(snapshotter, tmp_path):
    root = str(tmp_path / "store")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_MID_COMMIT), snapshotter.name, root])
    assert proc.returncode == -signal.SIGKILL
    assert snapshotter.store.keys() == []
    work = os.path.join(root, os.path.basename(snapshotter.store.directory) + ".tmp")
    assert len(os.listdir(work)) == 1
    snapshotter.store.clean_stale()
    assert os.listdir(work) == []


def test_the_store_picks_the_snapshotter(tmp_path, monkeypatch):
    from builder.errors import StoreError
    from builder.store import Store

    assert isinstance(Store(str(tmp_path / "a")).snapshotter, OverlaySnapshotter)
    monkeypatch.setenv("BUILD_IMAGE_SNAPSHOTTER", "naive")
    store = Store(str(tmp_path / "b"))
    assert isinstance(store.snapshotter, NaiveSnapshotter)
    assert store.snapshots.directory == str(tmp_path / "b" / "snapshots.naive")
    with pytest.raises(StoreError, match="unknown snapshotter 'zfs'"):
        Store(str(tmp_path / "c"), snapshotter="zfs")


# --- whole builds over each snapshotter ---------------------------------------------------------


@pytest.mark.registry
@pytest.mark.overlay
def test_a_build_gives_the_same_image_over_either_snapshotter(tmp_path, busybox_registry, monkeypatch):
    from builder import BuildOptions, build
    from tests.support.images import write_context

    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN echo hi > /hi && rm /etc/group && mkdir -p /d/e && echo x > /d/e/f
RUN ln /hi /hi2 && rm -rf /d && chmod 700 /home && touch -d @5 /home
COPY data.txt /copied/
RUN --mount=type=bind,target=/ctx,rw echo scribble > /ctx/data.txt && cat /ctx/data.txt > /seen
RUN --mount=type=cache,target=/cache echo cached >> /cache/log && cat /cache/log > /cachelog
""", "data.txt": "data\n"})
    image_ids = {}
    for kind in ("overlay", "naive"):
        monkeypatch.setenv("BUILD_IMAGE_SNAPSHOTTER", kind)
        out = str(tmp_path / f"rootfs-{kind}")
        result = build(BuildOptions(context=context, root=str(tmp_path / f"store-{kind}"),
                                    build_args={"SOURCE_DATE_EPOCH": "10"}, outputs=(f"type=local,dest={out}",)))
        image_ids[kind] = result.image_id
        assert os.path.isdir(tmp_path / f"store-{kind}" / ("snapshots.naive" if kind == "naive" else "snapshots"))
        assert open(f"{out}/hi2").read() == "hi\n" and os.stat(f"{out}/hi").st_ino == os.stat(f"{out}/hi2").st_ino
        assert not os.path.exists(f"{out}/d") and not os.path.exists(f"{out}/etc/group")
        assert open(f"{out}/seen").read() == "scribble\n" and open(f"{out}/copied/data.txt").read() == "data\n"
        assert stat.S_IMODE(os.stat(f"{out}/home").st_mode) == 0o700
        assert open(f"{out}/cachelog").read() == "cached\n"
        assert open(os.path.join(context, "data.txt")).read() == "data\n"  # the rw bind's writes are dropped
    # the same layers, so the same image, whichever snapshotter made them
    assert image_ids["overlay"] == image_ids["naive"]
