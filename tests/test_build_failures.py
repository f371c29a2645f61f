"""Bad input and failed builds: one clear message, no traceback, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.images import build_image, write_context
from tests.support.storelock import wait_until_unused


def mounts_mentioning(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if path in line]


def leftovers(store_root: str) -> list[str]:
    """Temp entries a build may leave in the store: scratch dirs and half-written blobs. Read once
    the build's deleter is done with the scratch dirs the build discarded (a failed step's)."""
    wait_until_unused(store_root)
    found = []
    for sub in ("blobs/tmp", "snapshots.tmp"):
        path = os.path.join(store_root, sub)
        if os.path.isdir(path):
            found += [os.path.join(sub, n) for n in os.listdir(path)]
    return found


def test_unknown_instruction_names_file_and_line(tmp_path, store_root):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n\nFROBNICATE all\n"})
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "ERROR: Dockerfile:3: unknown instruction: FROBNICATE"
    assert "Traceback" not in proc.stderr


def test_missing_copy_source_is_reported(tmp_path, store_root):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY missing.txt /\n"})
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1
    assert '"/missing.txt": not found' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_context_and_dockerfile(tmp_path, store_root):
    proc = build_image("--root", store_root, str(tmp_path / "nope"), check=False)
    assert proc.returncode == 1 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    os.makedirs(tmp_path / "empty")
    proc = build_image("--root", store_root, str(tmp_path / "empty"), check=False)
    assert proc.returncode == 1 and "failed to read dockerfile" in proc.stderr


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_failed_run_shows_command_exit_code_and_last_lines(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN echo ok > /ok
RUN for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line $i; done; echo oops >&2; exit 3
"""})
    proc = build_image("--root", store_root, "--progress", "plain", context, check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ('ERROR: failed to solve: process "/bin/sh -c for i in 1 2 3 4 5 6 7 8 9 10 11 12; '
                    'do echo line $i; done; echo oops >&2; exit 3" did not complete successfully: exit code: 3')
    assert "   oops" in proc.stderr and "   line 12" in proc.stderr
    assert "   line 1\n" not in proc.stderr.split("------")[1]  # only the last lines are repeated
    assert "Traceback" not in proc.stderr
    assert leftovers(store_root) == []
    assert mounts_mentioning(store_root) == []


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_interrupted_build_cleans_up(tmp_path, store_root, busybox_registry):
    marker = f"build-image-interrupt-{os.getpid()}-{time.monotonic_ns()}"
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference} AS one
RUN echo started; sleep 300; echo never {marker}

FROM {busybox_registry.reference} AS two
RUN echo started; sleep 301; echo never {marker}

FROM scratch
COPY --from=one /etc/passwd /a
COPY --from=two /etc/passwd /b
"""})
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "--root", store_root, "--progress", "plain",
                             context], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = ""
    deadline = time.monotonic() + 60
    while seen.count("started") < 2 and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    assert seen.count("started") == 2, seen
    time.sleep(0.5)  # both steps are well into their sleep: only the interrupt can end them
    assert proc.poll() is None
    assert len(subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()) == 2
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130
    assert "Traceback" not in rest
    sleepers = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert sleepers == []
    assert leftovers(store_root) == []
    assert mounts_mentioning(store_root) == []


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_sigkilled_build_leaves_nothing_running_and_the_next_build_cleans_up(tmp_path, store_root,
                                                                            busybox_registry):
    marker = f"build-image-sigkill-{os.getpid()}-{time.monotonic_ns()}"
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN echo started; sleep 300; echo never {marker}
"""})
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "--root", store_root, "--progress", "plain",
                             context], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = ""
    deadline = time.monotonic() + 60
    while "started" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    proc.kill()                                   # no chance to clean up: SIGKILL
    proc.wait(timeout=30)
    proc.stderr.close()
    deadline = time.monotonic() + 10              # the container dies with its parent (PDEATHSIG)
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the RUN outlived a SIGKILLed build-image"
        time.sleep(0.1)
    assert mounts_mentioning(store_root) == []
    # What the killed process left on disk (scratch dirs) goes when the root is next opened.
    write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN true\n"})
    build_image("--root", store_root, context)
    assert leftovers(store_root) == []
    assert os.listdir(os.path.join(store_root, "run")) == []
