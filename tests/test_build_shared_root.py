"""Several build-image processes on one store root at once: all succeed, the store stays sound."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.images import build_image, step_lines, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


def test_concurrent_builds_share_one_root(tmp_path, store_root, busybox_registry):
    contexts = []
    for i in range(3):
        # Two of them are the same build (racing to commit the same layers), one differs.
        marker = "same" if i < 2 else "other"
        contexts.append(write_context(tmp_path / f"ctx{i}", {
            "Dockerfile": f"FROM {busybox_registry.reference}\nCOPY data.txt /\n"
                          f"RUN echo {marker} >> /data.txt\nRUN sleep 0.2 && cp /data.txt /copy.txt\n",
            "data.txt": "shared\n"}))
    procs = [subprocess.Popen([sys.executable, "-m", "builder.cli", "--root", store_root, "-q",
                               "-t", f"race:{i}", ctx], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i, ctx in enumerate(contexts)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
    ids = [out.strip() for out, _ in results]
    # Separate processes cannot share a step in flight: the twins may both run it (so their
    # timestamps differ), but each result is complete and the store stays sound.
    assert all(i.startswith("sha256:") for i in ids) and ids[2] not in ids[:2]
    assert build_image("fsck", "--root", store_root).returncode == 0
    tags = build_image("images", "--root", store_root, "--format", "{{.Repository}}:{{.Tag}}").stdout
    assert {"race:0", "race:1", "race:2"} <= set(tags.split())
    # and the next build reuses the cache the racers left
    again = build_image("--root", store_root, "--progress", "plain", contexts[0])
    assert [s for s in step_lines(again.stderr, "DONE") if not s.startswith("[internal]")] == []
    assert len(step_lines(again.stderr, "CACHED")) >= 3
