"""Eight builds at once into one store while fsck, rmi and prune run beside them in a loop: every
build succeeds, nothing deadlocks (each process has a time limit), fsck never reports a problem,
and the store is sound at the end. (rmi and prune hold the root exclusively, so they queue behind
the builds' shared lock rather than pull blobs from under them: what is under test is that they
wait and then work.) The run's figure: "concurrent builds: 8/8 succeeded beside N prunes, ..."."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from tests.support.images import write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]

BUILDS = 8


def _cli(root: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "builder.cli", *args, "--root", root]


def test_eight_builds_with_prune_rmi_and_fsck_beside_them(tmp_path, store_root, busybox_registry, record_property):
    contexts = []
    for i in range(BUILDS):
        # pairs share their first steps, so builds race to commit the same layers
        contexts.append(write_context(tmp_path / f"ctx{i}", {
            "Dockerfile": f"FROM {busybox_registry.reference}\nCOPY shared /shared\n"
                          f"RUN echo pair {i // 2} > /pair && head -c 100000 /dev/urandom > /noise\n"
                          f"RUN echo build {i} > /me\n",
            "shared": "the same for all\n"}))
    builds = [subprocess.Popen(_cli(store_root, "build", "-q", "-t", f"many:{i}", ctx), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
              for i, ctx in enumerate(contexts)]
    counts = {"prune": 0, "rmi": 0, "fsck": 0}
    fsck_reports: list[str] = []
    done = threading.Event()

    def beside() -> None:
        n = 0
        while not done.is_set() or min(counts.values()) < 2:
            kind = ("fsck", "rmi", "prune")[n % 3]
            args = {"prune": ("prune", "-f"), "rmi": ("rmi", "-f", f"many:{n % BUILDS}"), "fsck": ("fsck",)}[kind]
            proc = subprocess.run(_cli(store_root, *args), capture_output=True, text=True, timeout=300,
                                  stdin=subprocess.DEVNULL)
            counts[kind] += 1
            if kind == "fsck" and proc.returncode != 0:
                fsck_reports.append(proc.stdout + proc.stderr)
            n += 1

    helper = threading.Thread(target=beside)
    helper.start()
    try:
        results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in builds]
    finally:
        done.set()
        helper.join(timeout=600)
    succeeded = sum(1 for code, _, _ in results if code == 0)
    figure = (f"concurrent builds: {succeeded}/{BUILDS} succeeded beside {counts['prune']} prunes, "
              f"{counts['rmi']} rmis, {counts['fsck']} fscks")
    record_property("figure", figure)
    print(figure)
    assert succeeded == BUILDS, [err for code, _, err in results if code]
    assert not fsck_reports, fsck_reports
    final = subprocess.run(_cli(store_root, "fsck"), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0 and "no problems found" in final.stdout, final.stdout + final.stderr
    # the images not removed by the rmi loop are whole and runnable as bases of a next build
    again = subprocess.run(_cli(store_root, "build", "-q", contexts[0]), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
