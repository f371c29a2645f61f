"""Many layers and concurrent stages."""

from __future__ import annotations

import os
import threading

import pytest

from builder import build
from builder import BuildOptions, OutputSpec
from builder import events
from tests.support.images import write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


def test_130_run_steps_each_see_every_earlier_layer(tmp_path, store_root, busybox_registry):
    # Past about 43 layers the classic mount(2) option string overflows one page and overlay
    # silently drops layers: the last RUN must still see all 129 files and be able to write.
    steps = "\n".join(f"RUN echo {i} > /f{i}" for i in range(1, 130))
    dockerfile = (f"FROM {busybox_registry.reference}\n{steps}\n"
                  "RUN ls /f* | wc -l > /count && cat /f1 /f129 >> /count\n")
    context = write_context(tmp_path / "ctx", {"Dockerfile": dockerfile})
    out = str(tmp_path / "rootfs")
    build(BuildOptions(context=context, root=store_root, outputs=(OutputSpec("local", (("dest", out),)),)))
    with open(os.path.join(out, "count")) as f:
        assert f.read().split() == ["129", "1", "129"]


def test_independent_stages_run_concurrently(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference} AS left
RUN sleep 1 && echo left > /out

FROM {busybox_registry.reference} AS right
RUN sleep 1 && echo right > /out

FROM scratch
COPY --from=left /out /left
COPY --from=right /out /right
"""})
    order: list[str] = []
    sleeping: set[str] = set()
    lock = threading.Lock()

    def progress(event):  # called from the solver's worker threads
        with lock:
            if isinstance(event, events.Started) and "RUN sleep" in event.name:
                sleeping.add(event.id)
                order.append("start")
            elif isinstance(event, events.Finished) and event.id in sleeping:
                order.append("end")

    out = str(tmp_path / "out")
    build(BuildOptions(context=context, root=store_root, jobs=2, outputs=(OutputSpec("local", (("dest", out),)),)),
          progress)
    assert order == ["start", "start", "end", "end"]  # both RUNs were running at the same time
    assert open(os.path.join(out, "left")).read() == "left\n"
    assert open(os.path.join(out, "right")).read() == "right\n"
