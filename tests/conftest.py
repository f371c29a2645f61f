"""Shared fixtures; the logic lives in tests/support."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from tests.support.baseimage import push_busybox_image
from tests.support.debianbase import DOCKER_V2_TAG, OCI_TAG, DebianBase, debian_base, push_debian_images
from tests.support.registry import Registry


@dataclass(frozen=True)
class BusyboxRegistry:
    registry: Registry
    host: str             # "127.0.0.1:PORT"
    url: str              # "http://127.0.0.1:PORT"
    reference: str        # "127.0.0.1:PORT/busybox:latest"
    digest: str           # its manifest digest


@dataclass(frozen=True)
class DebianRegistry:
    base: DebianBase      # the cached debootstrap tree and its layer
    host: str             # "127.0.0.1:PORT", the same registry as busybox_registry's
    reference: str        # "127.0.0.1:PORT/debian:bookworm", Docker v2 media types
    oci_reference: str    # "127.0.0.1:PORT/debian:bookworm-oci", OCI media types
    digests: dict         # {tag: manifest digest}


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


@pytest.fixture(scope="session")
def debian_registry(busybox_registry):
    """The Debian base (debootstrap minbase bookworm, cached once per machine: tests/support/debianbase.py)
    pushed to this worker's registry as debian:bookworm (Docker v2) and debian:bookworm-oci (OCI)."""
    base = debian_base()
    digests = push_debian_images(busybox_registry.host)
    host = busybox_registry.host
    return DebianRegistry(base, host, f"{host}/debian:{DOCKER_V2_TAG}", f"{host}/debian:{OCI_TAG}", digests)


@pytest.fixture(scope="session")
def private_dockerd():
    """One private dockerd per xdist worker (bench/dockerd.py), for tests that docker load and run images."""
    from bench.dockerd import DOCKER_CLIENT, DOCKERD, PrivateDockerd

    if not (os.access(DOCKERD, os.X_OK) and os.access(DOCKER_CLIENT, os.X_OK)):
        pytest.skip("Debian's docker.io is not installed")
    with PrivateDockerd() as daemon:
        yield daemon


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
