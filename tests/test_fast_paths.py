"""The paths that must be fast stay off the heavy imports (MACHINE.md: networkx ~0.6 s, lark ~0.25 s
under load): `--help`, and a rebuild whose inputs have not changed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.images import build_image, write_context

HEAVY = ("lark", "networkx", "pyroute2", "dill")


def imported_modules(*args: str) -> set[str]:
    """What `build-image ARGS` imports, with the processes it starts (the network agent)."""
    proc = subprocess.run([sys.executable, "-m", "builder.cli", *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_help_imports_nothing_heavy():
    modules = imported_modules("--help")
    assert "builder.cli" in modules
    assert not any(m.split(".")[0] in HEAVY for m in modules)


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_unchanged_rebuild_neither_parses_plans_nor_asks_the_registry(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {busybox_registry.reference}\nCOPY a.txt /\nRUN cat /a.txt > /b.txt\n",
        "a.txt": "a\n"})
    build_image("--root", store_root, context)
    modules = imported_modules("--root", store_root, "-q", context)
    assert "builder.pipeline" in modules and "builder.plan_cache" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []
    assert "builder.convert" not in modules and "builder.executor" not in modules
    assert "http.client" not in modules            # the base image is a local image now
    # Nor what only other builds need: the snapshotter, tar, cache import/export, secrets, layouts.
    unneeded = {"builder.snapshot.snapshotter", "builder.cache.variants", "tarfile", "builder.remotecache",
                "builder.session", "builder.image.layout", "builder.plumbing.linux"}
    assert sorted(modules & unneeded) == []


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_pyroute2_is_imported_only_when_a_run_uses_the_default_network(tmp_path, store_root, busybox_registry):
    base = busybox_registry.reference
    offline = write_context(tmp_path / "offline", {"Dockerfile": f"FROM {base}\nRUN --network=none echo a > /a\n"})
    assert "pyroute2" not in imported_modules("--root", store_root, offline)
    cli_none = write_context(tmp_path / "cli-none", {"Dockerfile": f"FROM {base}\nRUN echo b > /b\n"})
    assert "pyroute2" not in imported_modules("--root", store_root, "--network", "none", cli_none)
    networked = write_context(tmp_path / "networked", {"Dockerfile": f"FROM {base}\nRUN echo c > /c\n"})
    assert any(m.split(".")[0] == "pyroute2" for m in imported_modules("--root", store_root, networked))


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_a_no_cache_rebuild_of_the_same_dockerfile_takes_its_plan_from_the_memo(tmp_path, store_root,
                                                                                busybox_registry):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {busybox_registry.reference} AS a\nRUN echo a > /a\n"
                      f"FROM {busybox_registry.reference}\nCOPY --from=a /a /a\nCOPY f.txt /\nRUN cat /a\n",
        "f.txt": "one\n"})
    first = imported_modules("--root", store_root, "--no-cache", context)
    assert "networkx" in first and "lark" in first                                      # first: planned
    again = imported_modules("--root", store_root, "--no-cache", context)
    assert {"lark", "networkx", "builder.convert"} & again == set()                     # then: remembered
    (tmp_path / "ctx" / "f.txt").write_text("two\n")   # the context is no input of the plan
    assert {"lark", "builder.convert"} & imported_modules("--root", store_root, context) == set()
    # What the plan does depend on plans afresh: a build arg, the Dockerfile.
    assert "lark" in imported_modules("--root", store_root, "--no-cache", "--build-arg", "X=1", context)
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {busybox_registry.reference}\nRUN true\n")
    assert "lark" in imported_modules("--root", store_root, "--no-cache", context)


def test_the_seccomp_program_is_compiled_without_running_ldconfig():
    """pyseccomp looks its libraries up with ctypes.util.find_library when imported, which runs
    `ldconfig -p` each time; their sonames load directly, so it is never asked for them."""
    script = """
import ctypes.util, sys
asked = []
usual = ctypes.util.find_library
ctypes.util.find_library = lambda name: asked.append(name) or usual(name)
from builder.executor.seccomp import default_program
assert len(default_program()) > 1000
assert "pyseccomp" in sys.modules
print(asked)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
