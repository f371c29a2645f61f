"""Real-world Dockerfiles over a real Debian base, built by build-image and run by real consumers.

Each case is a folder under fixtures/realworld/ (see its README.md). Every image is built once per
worker (module-scoped, in its own store) with the default network, exported as an OCI and a docker
archive; umoci + runc run the first, a private dockerd (`docker load`, `docker run --network=none`) the
second, and both must print the folder's expected.txt. Tests of one image share an xdist group, so
they land on the worker that built it.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass

import pytest

from tests.support.debianbase import layer_diff_id
from tests.support.images import build_image, run_oci_archive

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.overlay, pytest.mark.registry,
              pytest.mark.tools, pytest.mark.docker]

REALWORLD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "realworld")
CASES = ["apt-get", "python", "gcc-multistage", "webapp", "apt-cache-mounts"]
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TAG = "test"


@dataclass(frozen=True)
class Built:
    name: str
    reference: str        # realworld/NAME:test
    oci_archive: str
    docker_archive: str
    store: str
    progress: str         # build-image's --progress plain output


def expected_output(name: str) -> str:
    with open(os.path.join(REALWORLD, name, "expected.txt"), encoding="utf-8") as f:
        return f.read()


def build_case(name: str, base: str, workdir: str, store: str, *extra: str) -> Built:
    os.makedirs(workdir, exist_ok=True)
    reference = f"realworld/{name}:{TAG}"
    oci, docker = os.path.join(workdir, "image.oci.tar"), os.path.join(workdir, "image.docker.tar")
    proc = build_image("--root", store, "--progress", "plain", "-t", reference, "--build-arg", f"BASE={base}",
                       "--secret", f"id=cacert,src={HOST_CA_BUNDLE}",
                       "-o", f"type=oci,dest={oci}", "-o", f"type=docker,dest={docker}", *extra,
                       os.path.join(REALWORLD, name))
    return Built(name, reference, oci, docker, store, proc.stderr)


@pytest.fixture(scope="module")
def built(debian_registry, tmp_path_factory):
    """build(NAME) -> Built, each case built at most once per worker (over the Docker v2 base)."""
    cache: dict[str, Built] = {}

    def build(name: str) -> Built:
        if name not in cache:
            work = tmp_path_factory.mktemp(f"realworld-{name}")
            cache[name] = build_case(name, debian_registry.reference, str(work / "out"), str(work / "store"))
        return cache[name]

    return build


def grouped(*names: str) -> list:
    return [pytest.param(n, marks=pytest.mark.xdist_group(f"realworld-{n}")) for n in names]


def docker(daemon, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(daemon.command(*args), env=daemon.env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def docker_load(daemon, image: Built) -> None:
    out = docker(daemon, "load", "-i", image.docker_archive).stdout
    assert f"Loaded image: {image.reference}" in out


def _blob(archive: tarfile.TarFile, digest: str):
    return archive.extractfile("blobs/sha256/" + digest.split(":", 1)[1])


def _manifest(archive: tarfile.TarFile) -> dict:
    index = json.load(archive.extractfile("index.json"))
    return json.load(_blob(archive, index["manifests"][0]["digest"]))


def image_config(oci_archive: str) -> dict:
    """The `config` section of the image config as written (skopeo would drop Docker's Healthcheck)."""
    with tarfile.open(oci_archive) as archive:
        return json.load(_blob(archive, _manifest(archive)["config"]["digest"]))["config"]


def layer_names(oci_archive: str) -> list[list[str]]:
    """The entry names of every layer of the one image in OCI_ARCHIVE, layer by layer."""
    with tarfile.open(oci_archive) as archive:
        layers = []
        for layer in _manifest(archive)["layers"]:
            with gzip.open(_blob(archive, layer["digest"])) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
                layers.append([member.name for member in tar])
        return layers


# -- the base itself ------------------------------------------------------------------------------

@pytest.mark.xdist_group("realworld-base")
def test_debian_base_is_in_the_registry_with_docker_v2_and_oci_media_types(debian_registry):
    import urllib.request

    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    seen = {}
    for reference in (debian_registry.reference, debian_registry.oci_reference):
        repo_tag = reference.split("/", 1)[1]
        repo, tag = repo_tag.rsplit(":", 1)
        request = urllib.request.Request(f"http://{debian_registry.host}/v2/{repo}/manifests/{tag}",
                                         headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=30) as r:
            manifest = json.load(r)
        seen[tag] = (manifest["mediaType"], manifest["config"]["mediaType"],
                     [layer["mediaType"] for layer in manifest["layers"]],
                     [layer["digest"] for layer in manifest["layers"]])
    assert seen["bookworm"][:3] == ("application/vnd.docker.distribution.manifest.v2+json",
                                    "application/vnd.docker.container.image.v1+json",
                                    ["application/vnd.docker.image.rootfs.diff.tar.gzip"])
    assert seen["bookworm-oci"][:3] == ("application/vnd.oci.image.manifest.v1+json",
                                        "application/vnd.oci.image.config.v1+json",
                                        ["application/vnd.oci.image.layer.v1.tar+gzip"])
    # One cached layer blob behind both, never re-compressed.
    assert seen["bookworm"][3] == seen["bookworm-oci"][3] == [debian_registry.base.layer_digest]


@pytest.mark.xdist_group("realworld-base")
def test_debian_base_layer_is_the_deterministic_tar_of_its_cached_tree(debian_registry):
    base = debian_registry.base
    assert layer_diff_id(base.rootfs) == base.diff_id
    assert os.path.isfile(os.path.join(base.rootfs, "usr/bin/apt-get"))
    assert os.listdir(os.path.join(base.rootfs, "dev")) == []
    assert not os.path.exists(os.path.join(base.rootfs, "etc/resolv.conf"))  # the host's is not shipped
    assert [f for f in os.listdir(os.path.join(base.rootfs, "var/cache/apt/archives")) if f.endswith(".deb")] == []


# -- every case, under runc and under docker -------------------------------------------------------

@pytest.mark.parametrize("name", grouped(*CASES))
def test_oci_output_runs_under_runc(name, built, tmp_path):
    image = built(name)
    assert run_oci_archive(image.oci_archive, str(tmp_path / "run"), tag=TAG) == expected_output(name)


@pytest.mark.parametrize("name", grouped(*CASES))
def test_docker_output_runs_under_docker(name, built, private_dockerd):
    image = built(name)
    docker_load(private_dockerd, image)
    try:
        out = docker(private_dockerd, "run", "--rm", "--network=none", image.reference).stdout
    finally:
        docker(private_dockerd, "rmi", "-f", image.reference, check=False)
    assert out == expected_output(name)


@pytest.mark.xdist_group("realworld-base")
def test_oci_base_image_builds_and_runs_under_runc(debian_registry, tmp_path):
    # The same Dockerfile over the base pushed with OCI media types.
    image = build_case("apt-get", debian_registry.oci_reference, str(tmp_path / "out"), str(tmp_path / "store"))
    assert run_oci_archive(image.oci_archive, str(tmp_path / "run"), tag=TAG) == expected_output("apt-get")


# -- what each case is about ------------------------------------------------------------------------

@pytest.mark.xdist_group("realworld-python")
def test_python_secret_ca_bundle_never_lands_in_a_layer(built):
    image = built("python")
    assert "Successfully installed six-1.16.0" in image.progress
    names = [n for layer in layer_names(image.oci_archive) for n in layer]
    assert not any(n.startswith("run/secrets/") and n != "run/secrets" for n in names)
    config = image_config(image.oci_archive)
    assert config["User"] == "nobody"


@pytest.mark.xdist_group("realworld-gcc-multistage")
def test_gcc_scratch_image_is_one_static_binary_whose_cmd_arguments_can_be_replaced(built, private_dockerd,
                                                                                    tmp_path):
    image = built("gcc-multistage")
    assert layer_names(image.oci_archive) == [["usr", "usr/bin", "usr/bin/args"]]
    config = image_config(image.oci_archive)
    assert config["Entrypoint"] == ["/usr/bin/args"] and config["Cmd"] == ["hello", "from scratch"]

    replaced = "1 args\n[1] replaced\n"
    assert run_oci_archive(image.oci_archive, str(tmp_path / "run"), args=["/usr/bin/args", "replaced"],
                           tag=TAG) == replaced
    docker_load(private_dockerd, image)
    try:
        out = docker(private_dockerd, "run", "--rm", "--network=none", image.reference, "replaced").stdout
    finally:
        docker(private_dockerd, "rmi", "-f", image.reference, check=False)
    assert out == replaced


@pytest.mark.xdist_group("realworld-webapp")
def test_webapp_config_and_healthcheck_docker_reports_healthy(built, private_dockerd):
    image = built("webapp")
    config = image_config(image.oci_archive)
    assert config["User"] == "web" and config["WorkingDir"] == "/srv/site"
    assert config["ExposedPorts"] == {"8000/tcp": {}}
    assert config["Healthcheck"]["Test"] == ["CMD-SHELL", "curl -fsS http://127.0.0.1:8000/ >/dev/null || exit 1"]

    # docker runs the image's own HEALTHCHECK against a long-running server (checked every second here).
    docker_load(private_dockerd, image)
    container = docker(private_dockerd, "run", "-d", "--network=none", "--health-interval=1s", image.reference,
                       "python3", "-m", "http.server", "8000", "--bind", "127.0.0.1").stdout.strip()
    try:
        status = ""
        for _ in range(60):
            status = docker(private_dockerd, "inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()
            if status in ("healthy", "unhealthy"):
                break
            subprocess.run(["sleep", "0.5"])
        assert status == "healthy"
    finally:
        docker(private_dockerd, "rm", "-f", container, check=False)
        docker(private_dockerd, "rmi", "-f", image.reference, check=False)


def _step_output(progress: str, step_text: str) -> list[str]:
    """The output lines (`#N 1.234 text` -> `text`) of the progress step whose title contains STEP_TEXT."""
    number = next(line.split(" ", 1)[0] for line in progress.splitlines()
                  if line.startswith("#") and step_text in line)
    lines = []
    for line in progress.splitlines():
        parts = line.split(" ", 2)
        if parts[0] == number and len(parts) == 3 and parts[1].replace(".", "").isdigit():
            lines.append(parts[2])
    return lines


@pytest.mark.xdist_group("realworld-apt-cache-mounts")
def test_apt_cache_mounts_make_a_no_cache_rebuild_download_nothing_and_keep_debs_out_of_layers(
        built, debian_registry, tmp_path_factory):
    first = built("apt-cache-mounts")
    first_install = _step_output(first.progress, "apt-get install")
    assert any(line.startswith("Get:") and " bc " in line for line in first_install), first_install

    work = tmp_path_factory.mktemp("realworld-apt-cache-mounts-again")
    second = build_case("apt-cache-mounts", debian_registry.reference, str(work / "out"), first.store,
                        "--no-cache")
    second_install = _step_output(second.progress, "apt-get install")
    assert second_install, second.progress
    # The lists and .debs come from the cache mounts. This machine's mirror never answers a conditional
    # request with 304, so `apt-get update` fetches InRelease again and, as it is unchanged, nothing else.
    downloads = [line for line in second_install if line.startswith("Get:")]
    assert all("InRelease" in line.split() for line in downloads), downloads
    assert any(line.startswith("Need to get 0 B/") for line in second_install), second_install

    for image in (first, second):
        debs = [n for layer in layer_names(image.oci_archive) for n in layer if n.endswith(".deb")]
        assert debs == []
