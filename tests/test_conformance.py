"""Conformance with BuildKit: each case in tests/conformance/cases builds with build-image, and the image's
summary (changed files, config, history pattern) must equal the one BuildKit produced (expected.json,
written by tests/conformance/regenerate.py), with none of the case's secrets in it; a Dockerfile BuildKit
refused ("expect_error" cases) must be refused too. Known differences are strict xfails, listed with their
reason in tests/conformance/known_differences.json: fixing one turns its xfail into a failure until the
entry goes."""

from __future__ import annotations

import difflib
import json

import pytest

from tests.conformance.cases import busybox_base_tree, case_names, known_differences, load_case, stage_context
from tests.conformance.summary import read_image, summarize
from tests.support.images import build_image

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry, pytest.mark.tools]

_ERROR_LINES = 8


def _cases():
    differences = known_differences()
    unknown = set(differences) - set(case_names())
    if unknown:
        raise ValueError(f"known_differences.json names cases that do not exist: {sorted(unknown)}")
    return [pytest.param(name, id=name, marks=[pytest.mark.xfail(strict=True, reason=differences[name])]
                         if name in differences else []) for name in case_names()]


@pytest.fixture(scope="session")
def base_tree():
    return busybox_base_tree()


@pytest.mark.parametrize("name", _cases())
def test_conformance(name, busybox_registry, base_tree, store_root, tmp_path):
    case = load_case(name)
    context = stage_context(case, str(tmp_path / "context"), busybox_registry.host)
    archive = str(tmp_path / "image.tar")
    # --network none: the recorded BuildKit results were built with `docker build --network=none`.
    built = build_image("--root", store_root, "--progress", "plain", "--network", "none",
                        "--build-arg", f"BASE={busybox_registry.reference}", *case.build_flags(),
                        *case.secret_flags(str(tmp_path)), "-o", f"type=oci,dest={archive}", context,
                        check=False)
    if case.expect_error:
        if built.returncode == 0:
            pytest.fail(f"{name}: build-image built it; {_engine(case)} refused it with:\n"
                        f"{case.expected()['error']}", pytrace=False)
        assert built.stderr.splitlines()[-1].startswith("ERROR: "), built.stderr
        return
    if built.returncode != 0:
        tail = "\n".join(built.stderr.splitlines()[-_ERROR_LINES:])
        pytest.fail(f"{name}: build-image failed where {_engine(case)} built it:\n{tail}", pytrace=False)

    image = read_image(archive)
    _assert_no_secret_leaked(case, image)
    actual = summarize(image, base_tree, busybox_registry.host)
    expected = case.expected_summary()

    if actual != expected:
        pytest.fail(f"{name}: build-image differs from {_engine(case)}:\n"
                    + _diff(expected, actual), pytrace=False)


def _assert_no_secret_leaked(case, image) -> None:
    """A secret reaches a RUN only through its mount: its value is in no layer and not in the config."""
    blobs = [*image.layers, json.dumps(image.config).encode()]
    for secret_id, value in case.secrets.items():
        leaked = [i for i, blob in enumerate(blobs) if value.encode() in blob]
        assert not leaked, f"secret {secret_id} is in the image (blobs {leaked}; the last one is the config)"


def _engine(case) -> str:
    expected = case.expected()
    if expected.get("source") == "reference":
        return "the Dockerfile reference"
    return expected.get("engine", "BuildKit")


def _diff(expected: dict, actual: dict) -> str:
    lines = []
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) == actual.get(key):
            continue
        want = json.dumps(expected.get(key), indent=1, sort_keys=True).splitlines()
        got = json.dumps(actual.get(key), indent=1, sort_keys=True).splitlines()
        lines += difflib.unified_diff(want, got, f"expected {key}", f"build-image {key}", lineterm="", n=2)
    return "\n".join(lines)
