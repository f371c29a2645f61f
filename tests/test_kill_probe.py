"""SIGKILL at random moments: builds (each new, so it has work to do), pulls (of an image whose
blobs were just pruned away), prunes and registry-cache imports (a build whose steps all come from
an imported cache, its local cache pruned first), each killed after a random delay. After every kill `fsck`
finds nothing wrong; every few kills, and at the end, a build runs to completion and fsck is
clean again. Seeded (BUILD_IMAGE_KILL_SEED); at least KILLS kills land on a live process.
The run's figure: "kills survived: N/N"."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest

from tests.support.images import write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]

KILLS = 30
MAX_CYCLES = 120
SEED = int(os.environ.get("BUILD_IMAGE_KILL_SEED", "1201"))


def _cli(root: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "builder.cli", *args, "--root", root]


def _run(root: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(root, *args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _fsck_clean(root: str) -> str:
    """'' when fsck finds nothing; else its report."""
    proc = _run(root, "fsck")
    return "" if proc.returncode == 0 and "no problems found" in proc.stdout else proc.stdout + proc.stderr


def test_random_sigkills_leave_a_sound_store(tmp_path, store_root, busybox_registry, record_property):
    rng = random.Random(SEED)
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {busybox_registry.reference}\nARG N\nCOPY data /data\n"
                      "RUN echo $N > /n && head -c 300000 /dev/urandom > /blob\n"
                      "RUN cat /n /data > /both && sleep 0.1\n",
        "data": "payload\n" * 1000})
    assert _run(store_root, context, "-q").returncode == 0  # a store with a base, cache and images

    def build(n: int) -> list[str]:
        return _cli(store_root, "build", "-q", "--build-arg", f"N={n}", "-t", f"kill:{n % 5}", context)

    def pull(n: int) -> list[str]:
        # forget the base so the pull fetches its blobs again
        _run(store_root, "rmi", "-f", busybox_registry.reference)
        _run(store_root, "prune", "-a", "-f")
        return _cli(store_root, "pull", busybox_registry.reference)

    def prune(n: int) -> list[str]:
        return _cli(store_root, "prune", "-a", "-f", "--cache")

    # A registry cache to import: a build whose steps all come from it, after the local cache is gone.
    cache_ref = f"{busybox_registry.host}/kill-cache:1"
    exported = _run(store_root, "build", "-q", "--build-arg", "N=cached", "--cache-to",
                    f"type=registry,ref={cache_ref},mode=max", context)
    assert exported.returncode == 0, exported.stderr

    def cache_import(n: int) -> list[str]:
        _run(store_root, "prune", "-a", "-f", "--cache")
        return _cli(store_root, "build", "-q", "--build-arg", "N=cached", "--cache-from",
                    f"type=registry,ref={cache_ref}", context)

    def timed(command) -> float:
        start = time.monotonic()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        return time.monotonic() - start

    # Each kill lands at a random point of the operation's own length here (measured once, unkilled),
    # so the kills land on a fast machine and a slow one alike.
    operations = [(name, command, timed(command(-1 - i))) for i, (name, command) in
                  enumerate((("build", build), ("pull", pull), ("prune", prune), ("cache import", cache_import)))]
    kills: dict[str, int] = {name: 0 for name, *_ in operations}
    problems: list[str] = []
    cycle = 0
    while sum(kills.values()) < KILLS and cycle < MAX_CYCLES:
        cycle += 1
        name, command, duration = operations[cycle % len(operations)] if cycle % 5 else operations[0]
        proc = subprocess.Popen(command(cycle), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.15, 0.95) * duration)  # mostly past interpreter start: inside the operation
        if proc.poll() is None:
            proc.kill()
            kills[name] += 1
        proc.wait()
        report = _fsck_clean(store_root)
        if report:
            problems.append(f"after killing {name} (cycle {cycle}): {report}")
        if cycle % 10 == 0:
            rebuilt = _run(store_root, "build", "-q", "--build-arg", f"N=again{cycle}", context)
            if rebuilt.returncode != 0:
                problems.append(f"rebuild after cycle {cycle} failed: {rebuilt.stderr}")
    final = _run(store_root, "build", "-q", "--build-arg", "N=final", context)
    total = sum(kills.values())
    figure = (f"kills survived: {total - len(problems)}/{total} "
              f"({', '.join(f'{n} {k}' for k, n in kills.items())}; fsck clean after each)")
    record_property("figure", figure)
    print(figure)
    assert final.returncode == 0, final.stderr
    assert not _fsck_clean(store_root)
    assert total >= KILLS, f"only {total} kills landed in {cycle} cycles"
    assert not problems, "\n".join(problems)
