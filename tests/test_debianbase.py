"""The Debian base fixture's cache: one build per key, shared by parallel workers, never half-built.

debootstrap itself is replaced by a stand-in here (test_realworld.py uses the real one); what is
checked is the locking, the atomic rename and the key.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest

from tests.support import debianbase


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(debianbase.CACHE_ENV, str(root))
    monkeypatch.setattr(debianbase, "debootstrap_version", lambda: "1.0.test")
    return root


def fake_build(log: str, seconds: float = 0.0):
    """A stand-in for debootstrap + tar: records who built, takes SECONDS, writes a complete entry."""
    def build(tmp: str, inputs: dict) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        os.makedirs(os.path.join(tmp, "rootfs", "etc"))
        time.sleep(seconds)
        meta = dict(inputs, layer_digest="sha256:" + "0" * 64, layer_size=1, diff_id="sha256:" + "1" * 64)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
    return build


def _worker(log: str, seconds: float, results) -> None:
    debianbase._build_entry = fake_build(log, seconds)
    results.put(debianbase.debian_base().entry)


def builders(log) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_parallel_workers_share_one_build(cache, tmp_path):
    log = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(log), 0.5, results)) for _ in range(3)]
    for p in procs:
        p.start()
    entries = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert len(builders(log)) == 1
    assert len(set(entries)) == 1 and os.path.isfile(os.path.join(entries[0], "meta.json"))


def test_a_killed_build_is_never_reused(cache, tmp_path, monkeypatch):
    log = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    stuck = ctx.Process(target=_worker, args=(str(log), 3600, results))
    stuck.start()
    deadline = time.monotonic() + 30
    while not builders(log) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(stuck.pid, signal.SIGKILL)
    stuck.join()
    half_built = [n for n in os.listdir(cache) if ".tmp-" in n]
    assert len(half_built) == 1 and not [n for n in os.listdir(cache) if n.startswith("debian-") and
                                         not n.endswith(".lock")]

    monkeypatch.setattr(debianbase, "_build_entry", fake_build(str(log)))
    base = debianbase.debian_base()
    assert builders(log) == [str(stuck.pid), str(os.getpid())]
    assert os.path.basename(base.entry).startswith("debian-")
    assert [n for n in os.listdir(cache) if ".tmp-" in n] == []  # the killed build's leftovers are gone


def test_a_complete_entry_is_reused_and_rebuild_replaces_it(cache, tmp_path, monkeypatch):
    log = tmp_path / "builds.log"
    monkeypatch.setattr(debianbase, "_build_entry", fake_build(str(log)))
    first = debianbase.debian_base()
    assert debianbase.debian_base() == first and len(builders(log)) == 1
    assert debianbase.debian_base(rebuild=True) == first and len(builders(log)) == 2


def test_key_changes_with_debootstrap_and_fixture_versions(cache, monkeypatch):
    key = debianbase.cache_key()
    monkeypatch.setattr(debianbase, "debootstrap_version", lambda: "1.0.other")
    other_debootstrap = debianbase.cache_key()
    monkeypatch.setattr(debianbase, "FIXTURE_VERSION", debianbase.FIXTURE_VERSION + 1)
    other_fixture = debianbase.cache_key()
    monkeypatch.setattr(debianbase, "INCLUDE", ("ca-certificates",))
    other_packages = debianbase.cache_key()
    assert len({key, other_debootstrap, other_fixture, other_packages}) == 4
