"""--verify-reproducible over real Debian images (fixtures/realworld/, the cached debootstrap base):
the reproducible variants in fixtures/reproducible/ give one image ID in two builds, and the
unchanged apt-get Dockerfile is reported naming exactly the files that made it differ."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from tests.support.images import build_image

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
EPOCH = "SOURCE_DATE_EPOCH=1700000000"


def verify(base: str, name: str, *extra: str, dockerfile: str | None = None) -> tuple[int, dict]:
    args = ["build", "-q", "--verify-reproducible", "--format", "json", "--build-arg", f"BASE={base}",
            "--build-arg", EPOCH, "--secret", f"id=cacert,src={HOST_CA_BUNDLE}", *extra]
    if dockerfile:
        args += ["-f", dockerfile]
    proc = build_image(*args, os.path.join(FIXTURES, "realworld", name), check=False)
    assert proc.returncode in (0, 1) and proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def archive_image_id(path: str) -> str:
    with tarfile.open(path) as archive:
        index = json.load(archive.extractfile("index.json"))
        manifest = archive.extractfile("blobs/sha256/" + index["manifests"][0]["digest"].split(":", 1)[1])
        return json.load(manifest)["config"]["digest"]


@pytest.mark.parametrize("name, dockerfile", [
    ("apt-get", "apt-get.Dockerfile"), ("python", "python.Dockerfile"), ("webapp", "webapp.Dockerfile"),
    ("gcc-multistage", None),   # as it is: the scratch image holds only the static binary
])
def test_the_reproducible_variant_builds_one_image_twice(name, dockerfile, debian_registry, tmp_path):
    archive = tmp_path / "image.oci.tar"
    code, report = verify(debian_registry.reference, name, "-o", f"type=oci,dest={archive},rewrite-timestamp=true",
                          dockerfile=dockerfile and os.path.join(FIXTURES, "reproducible", dockerfile))
    assert code == 0, json.dumps(report, indent=1)[:4000]
    assert report["reproducible"] and report["image_id"] == report["second_image_id"]
    assert archive_image_id(str(archive)) == report["image_id"]     # the first build's output is that image


def test_the_apt_get_image_that_keeps_its_logs_is_reported_naming_them(debian_registry):
    code, report = verify(debian_registry.reference, "apt-get")
    assert code == 1 and not report["reproducible"]
    kept = {"/var/log/apt/history.log", "/var/log/apt/term.log", "/var/log/dpkg.log", "/var/cache/ldconfig/aux-cache"}
    [layer] = report["layers"]
    assert layer["index"] == 1 and layer["step_a"].startswith("RUN /bin/sh -c apt-get update")
    assert {f["path"]: [x["field"] for x in f["fields"]] for f in layer["files"]} == {p: ["digest"] for p in kept}
    assert {p for s in report["suggestions"] for p in s["paths"]} == kept
    assert [c["field"] for c in report["config"]] == ["rootfs.diff_ids[1]"]
