"""mount_overlay: many layers through the new mount API, base-first ordering, diffable upper dir."""

import errno
import os
import stat

import pytest

from builder.plumbing import linux
from builder.snapshot.overlay import OverlayError, mount_overlay
from tests.support.mountns import in_private_mount_namespace

pytestmark = [pytest.mark.root, pytest.mark.overlay]


def mounted(lowers, upper, work, target, check):
    def body():
        mount_overlay(lowers, upper, work, target)
        try:
            return check(target)
        finally:
            linux.umount2(target)
    return in_private_mount_namespace(body)


@pytest.fixture
def dirs(tmp_path):
    for name in ("upper", "work", "merged"):
        (tmp_path / name).mkdir()
    return tmp_path


@pytest.fixture(autouse=True)
def no_mount_leaks(tmp_path):
    # Other software may mount meanwhile: only mounts that mention this test's directory count.
    before = set(open("/proc/self/mountinfo").read().splitlines())
    yield
    after = set(open("/proc/self/mountinfo").read().splitlines())
    assert [m for m in after - before if str(tmp_path) in m] == []


def make_layer(root, name, files):
    layer = root / name
    layer.mkdir()
    for path, content in files.items():
        (layer / path).parent.mkdir(parents=True, exist_ok=True)
        (layer / path).write_text(content)
    return str(layer)


def test_later_layer_wins_base_first(dirs):
    base = make_layer(dirs, "base", {"f": "base", "only-base": "b"})
    top = make_layer(dirs, "top", {"f": "top"})
    seen = mounted((base, top), str(dirs / "upper"), str(dirs / "work"), str(dirs / "merged"),
                   lambda m: (open(f"{m}/f").read(), sorted(os.listdir(m))))
    assert seen == ("top", ["f", "only-base"])


def test_150_layers_with_long_paths_are_all_visible_and_writable(dirs):
    # Long paths push the classic lowerdir= option string far past one page (4096 bytes).
    deep = dirs / ("long-layer-directory-name-" * 4)
    deep.mkdir()
    lowers = [make_layer(deep, f"layer-{i:03d}", {f"file-{i:03d}": str(i)}) for i in range(150)]
    assert len(":".join(lowers)) > 4096

    def check(merged):
        with open(f"{merged}/written", "w") as f:
            f.write("upper")
        return sorted(n for n in os.listdir(merged) if n.startswith("file-"))

    names = mounted(lowers, str(dirs / "upper"), str(dirs / "work"), str(dirs / "merged"), check)
    assert names == [f"file-{i:03d}" for i in range(150)]
    assert (dirs / "upper" / "written").read_text() == "upper"


def test_deletion_becomes_whiteout_in_upper(dirs):
    base = make_layer(dirs, "base", {"gone": "x", "kept": "y"})
    mounted((base,), str(dirs / "upper"), str(dirs / "work"), str(dirs / "merged"),
            lambda m: os.unlink(f"{m}/gone"))
    whiteout = os.lstat(dirs / "upper" / "gone")
    assert stat.S_ISCHR(whiteout.st_mode)
    assert (os.major(whiteout.st_rdev), os.minor(whiteout.st_rdev)) == (0, 0)
    assert os.listdir(dirs / "upper") == ["gone"]


def test_lower_directory_rename_is_refused_so_tools_copy(dirs):
    # redirect_dir=off: a renamed lower directory would otherwise be an xattr in the upper dir,
    # which a layer diff cannot express. mv falls back to copy + delete on EXDEV.
    base = make_layer(dirs, "base", {"d/inner": "y"})

    def check(merged):
        with pytest.raises(OSError) as info:
            os.rename(f"{merged}/d", f"{merged}/moved")
        return info.value.errno
    assert mounted((base,), str(dirs / "upper"), str(dirs / "work"), str(dirs / "merged"),
                   check) == errno.EXDEV


def test_without_upper_dir_the_mount_is_read_only(dirs):
    base = make_layer(dirs, "base", {"f": "x"})
    top = make_layer(dirs, "top", {"g": "y"})  # the kernel wants two lower dirs without an upper

    def check(merged):
        with pytest.raises(OSError):
            open(f"{merged}/new", "w")
        return open(f"{merged}/f").read()
    assert mounted((base, top), None, None, str(dirs / "merged"), check) == "x"


def test_missing_layer_reports_kernel_reason(dirs):
    with pytest.raises(OverlayError) as info:
        mounted((str(dirs / "nope"),), str(dirs / "upper"), str(dirs / "work"), str(dirs / "merged"),
                lambda m: None)
    assert "lowerdir+" in str(info.value) and str(dirs / "nope") in str(info.value)


def test_no_lower_dir_is_rejected(dirs):
    with pytest.raises(ValueError):
        mount_overlay((), str(dirs / "upper"), str(dirs / "work"), str(dirs / "merged"))


def test_a_writable_mount_is_volatile_and_its_work_dir_mounts_again(dirs):
    """No sync of the upper filesystem at unmount (the build syncs once, before naming), and the
    mark a volatile mount leaves in its work dir does not stop the same process mounting it again."""
    base = make_layer(dirs, "base", {"f": "base"})

    def options(target):
        line = next(l for l in open("/proc/thread-self/mountinfo") if l.split()[4] == target)
        with open(f"{target}/written", "w") as f:
            f.write("x")
        return line.split(" - ")[1].split()[2].split(",")

    for _ in range(2):
        shown = mounted((base,), str(dirs / "upper"), str(dirs / "work"), str(dirs / "merged"), options)
        assert "volatile" in shown or "fsync=volatile" in shown   # newer kernels show the latter
    assert (dirs / "upper" / "written").read_text() == "x"
