"""Base images: pulled once into the local store, then used from there unless --pull."""

from __future__ import annotations

import pytest

from tests.support.baseimage import push_busybox_image
from tests.support.images import build_image, write_context
from tests.support.registry import Registry

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry, pytest.mark.tools]


def test_pulled_base_is_a_local_image_used_without_the_registry(tmp_path, store_root):
    with Registry() as registry:
        push_busybox_image(registry.host)
        base = f"{registry.host}/busybox:latest"
        context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {base}\nRUN echo one > /one\n"})
        build_image("--root", store_root, context)
        listed = build_image("images", "--root", store_root, "--format", "json").stdout
        assert f"{registry.host}/busybox" in listed          # named, as after `docker pull`
    # The registry is gone: a new build still starts from the local copy...
    write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {base}\nRUN echo two > /two\n"})
    build_image("--root", store_root, context)
    # ...and --pull asks the registry, which fails with one line.
    proc = build_image("--root", store_root, "--pull", context, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert registry.host in proc.stderr.strip().splitlines()[-1]
