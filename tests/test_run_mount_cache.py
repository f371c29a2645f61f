"""RUN --mount=type=cache: kept across builds in the store root, never in a layer, shared by id
with BuildKit's sharing modes (shared, private, locked)."""

from __future__ import annotations

import os
import threading

import pytest

from builder.cache.cache_mounts import CacheMountStore
from tests.support.images import step_lines, write_context
from tests.test_run_mount import added_layer_entries, build, builds, output_lines


# ---- the store --------------------------------------------------------------------------------

def _seed_with(name: str, calls: list[str]):
    def seed(directory: str) -> None:
        calls.append(directory)
        with open(os.path.join(directory, "seeded"), "w") as f:
            f.write(name)
    return seed


def test_shared_users_get_the_same_directory_at_once(tmp_path):
    store, seeds = CacheMountStore(str(tmp_path)), []
    with store.acquire("k", "shared", _seed_with("a", seeds)) as first:
        with store.acquire("k", "shared", _seed_with("b", seeds)) as second:
            assert first == second
    assert len(seeds) == 1


def test_private_users_get_a_fresh_directory_while_one_is_in_use(tmp_path):
    store, seeds = CacheMountStore(str(tmp_path)), []
    with store.acquire("k", "private", _seed_with("a", seeds)) as first:
        with open(os.path.join(first, "mine"), "w"):
            pass
        with store.acquire("k", "private", _seed_with("b", seeds)) as second:
            assert second != first
            assert sorted(os.listdir(second)) == ["seeded"]
    with store.acquire("k", "private", _seed_with("c", seeds)) as again:
        assert again == first  # free again: reused, not seeded
    assert len(seeds) == 2


def test_locked_user_waits_for_the_holder(tmp_path):
    store = CacheMountStore(str(tmp_path))
    polled = threading.Event()
    events: list[str] = []

    def second_user():
        def waiting() -> bool:
            polled.set()
            return False
        with store.acquire("k", "locked", lambda d: None, cancelled=waiting) as path:
            events.append(f"second got {os.path.basename(path)}")

    with store.acquire("k", "locked", lambda d: None) as path:
        events.append(f"first got {os.path.basename(path)}")
        worker = threading.Thread(target=second_user)
        worker.start()
        assert polled.wait(30)  # it is blocked, polling for cancellation
        events.append("first released")
    worker.join(30)
    assert events == ["first got 0", "first released", "second got 0"]


def test_cancelled_locked_wait_gives_up(tmp_path):
    store = CacheMountStore(str(tmp_path))
    with store.acquire("k", "locked", lambda d: None):
        with pytest.raises(InterruptedError):
            with store.acquire("k", "locked", lambda d: None, cancelled=lambda: True):
                pass


def test_a_failed_seed_leaves_nothing(tmp_path):
    store = CacheMountStore(str(tmp_path))

    def broken(directory: str) -> None:
        raise RuntimeError("seed failed")

    with pytest.raises(RuntimeError):
        with store.acquire("k", "shared", broken):
            pass
    assert sorted(os.listdir(tmp_path / "k")) == ["lock"]


# ---- builds -----------------------------------------------------------------------------------

@builds
def test_cache_persists_across_builds_even_with_no_cache_and_is_never_in_a_layer(store_root, busybox_registry,
                                                                                 tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --mount=type=cache,target=/var/cache/app echo run >> /var/cache/app/runs && wc -l < /var/cache/app/runs \\
    && ls -ld /var/cache/app | cut -d' ' -f1
"""})
    archive = str(tmp_path / "image.tar")
    first = build(context, store_root, "-o", f"type=oci,dest={archive}")
    assert output_lines(first.stderr, "RUN --mount") == ["1", "drwxr-xr-x"]
    assert added_layer_entries(archive) == [[]]  # no /var/cache/app, no stub

    second = build(context, store_root, "--no-cache")
    assert output_lines(second.stderr, "RUN --mount") == ["2", "drwxr-xr-x"]

    cached = build(context, store_root)  # the step itself is cached: the cache is not its input
    assert any("RUN --mount" in s for s in step_lines(cached.stderr, "CACHED"))


@builds
def test_cache_id_shares_between_targets_and_mode_owner_apply(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --mount=type=cache,id=shared-id,target=/a echo hello > /a/note
RUN --mount=type=cache,id=shared-id,target=/b cat /b/note
USER 1000
RUN --mount=type=cache,target=/home/cache,uid=1000,gid=1000,mode=0700 touch /home/cache/ok && \\
    ls -ldn /home/cache | tr -s ' ' | cut -d' ' -f1,3,4
"""})
    result = build(context, store_root)
    assert output_lines(result.stderr, "target=/b") == ["hello"]
    assert output_lines(result.stderr, "target=/home/cache") == ["drwx------ 1000 1000"]


@builds
def test_cache_seeded_from_a_stage(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference} AS deps
RUN mkdir -p /deps && echo v1 > /deps/lib

FROM {busybox_registry.reference}
RUN --mount=type=cache,from=deps,source=/deps,target=/cache cat /cache/lib && echo local > /cache/extra
RUN --mount=type=cache,from=deps,source=/deps,target=/cache ls /cache
"""})
    result = build(context, store_root)
    assert output_lines(result.stderr, "cat /cache/lib") == ["v1"]
    assert output_lines(result.stderr, "ls /cache") == ["extra", "lib"]


@builds
def test_private_sharing_gives_concurrent_steps_their_own_directory(store_root, busybox_registry, tmp_path):
    # Two stages run at once; they meet through a shared cache, so that both hold the private
    # cache at the same time, then each lists what it sees there.
    def stage(me: str, other: str) -> str:
        return f"""\
FROM {busybox_registry.reference} AS {me}
RUN --mount=type=cache,id=private-test,target=/p,sharing=private \\
    --mount=type=cache,id=rendezvous,target=/sync \\
    touch /p/{me} /sync/{me} && \\
    for i in $(seq 600); do [ -e /sync/{other} ] && break; sleep 0.1; done && \\
    ls /p > /seen
"""
    context = write_context(tmp_path / "ctx", {"Dockerfile": stage("a", "b") + stage("b", "a") + f"""\
FROM {busybox_registry.reference}
RUN --mount=from=a,target=/a --mount=from=b,target=/b cat /a/seen /b/seen
"""})
    result = build(context, store_root, "--jobs", "2")
    assert output_lines(result.stderr, "cat /a/seen /b/seen") == ["a", "b"]
