"""Shared fixtures; the logic lives in tests/support."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.baseimage import push_busybox_image
from tests.support.registry import Registry


@dataclass(frozen=True)
class BusyboxRegistry:
    registry: Registry
    host: str             # "127.0.0.1:PORT"
    url: str              # "http://127.0.0.1:PORT"
    reference: str        # "127.0.0.1:PORT/busybox:latest"
    digest: str           # its manifest digest


@pytest.fixture
def registry():
    """A fresh anonymous docker-registry on its own port."""
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def busybox_registry():
    """One registry per xdist worker (each on its own port) holding busybox:latest. Push to other
    repositories in it freely; do not overwrite busybox:latest."""
    with Registry() as reg:
        digest = push_busybox_image(reg.host)
        yield BusyboxRegistry(reg, reg.host, reg.url, f"{reg.host}/busybox:latest", digest)


@pytest.fixture(scope="session")
def busybox_docker_v2(busybox_registry):
    """The same busybox image in busybox_registry's registry as busybox-v2s2:latest, with Docker
    schema 2 media types (manifest, config and layer), as most public base images still have."""
    host = busybox_registry.host
    digest = push_busybox_image(host, repository="busybox-v2s2", docker_v2=True)
    return BusyboxRegistry(busybox_registry.registry, host, busybox_registry.url,
                           f"{host}/busybox-v2s2:latest", digest)


@pytest.fixture
def store_root(tmp_path):
    """An empty directory for a build-image store root."""
    root = tmp_path / "store"
    root.mkdir()
    return str(root)


# ---- figures: a test may report a count ("escape attempts: 12/12 blocked") with
# record_property("figure", text); they are printed at the end of the run, xdist workers included.

_figures: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        _figures.extend(value for key, value in report.user_properties if key == "figure")


def pytest_terminal_summary(terminalreporter):
    if _figures:
        terminalreporter.section("figures")
        for figure in sorted(_figures):
            terminalreporter.write_line(figure)
