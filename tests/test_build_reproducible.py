"""Reproducible builds: with SOURCE_DATE_EPOCH, the same inputs give the same image digest."""

from __future__ import annotations

import os

import pytest

from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


def test_same_inputs_same_digest_in_two_fresh_stores(tmp_path, busybox_registry):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"""\
FROM {busybox_registry.reference} AS build
WORKDIR /src
COPY app.txt .
RUN sed s/a/b/ app.txt > out.txt && mkdir -p /opt/made && echo built > /opt/made/when

FROM {busybox_registry.reference}
COPY --from=build /src/out.txt /opt/made/when /app/
ENV MODE=release
CMD ["cat", "/app/out.txt"]
""",
        "app.txt": "aaa\n"})
    ids = []
    for name in ("first", "second"):
        iid = str(tmp_path / f"{name}.iid")
        build_image("--root", str(tmp_path / name), "--build-arg", "SOURCE_DATE_EPOCH=1700000000",
                    "--iidfile", iid, context)
        ids.append(open(iid).read())
        os.utime(os.path.join(context, "app.txt"))   # a touched source must not matter either
    assert ids[0] == ids[1]
