"""OCI outputs name only OCI media types, docker outputs Docker's, whatever family the base image has.

The base here is busybox pushed with Docker schema 2 media types (as most public images still are):
umoci rejects an OCI layout whose layers keep `application/vnd.docker.image.rootfs.diff.tar.gzip`, and
buildah ("unsupported MIME type for compression") too. Converting changes only manifest JSON: layer
digests and the config, so the image ID, stay the same in every output.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import urllib.request
from dataclasses import dataclass

import pytest

from builder.pipeline import OutputSpec
from builder.errors import BuildError
from builder.image import media
from tests.support.images import build_image, run_oci_archive, write_context


def needs_build(test):
    """Builds over a registry base and checks with skopeo, umoci, runc or buildah."""
    for mark in (pytest.mark.root, pytest.mark.overlay, pytest.mark.registry, pytest.mark.tools):
        test = mark(test)
    return test


DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY hello.txt /hello.txt
RUN echo built >> /hello.txt
CMD ["cat", "/hello.txt"]
"""

_ACCEPT = ", ".join((media.OCI_INDEX, media.OCI_MANIFEST, media.DOCKER_MANIFEST_LIST, media.DOCKER_MANIFEST))


# --- reading what was written -----------------------------------------------------------------


def layout_media_types(read) -> list[tuple[str, str]]:
    """(where, mediaType) for index.json, every document it reaches (nested indexes, manifests) and
    every descriptor in them. READ maps a layout path ("index.json", "blobs/sha256/...") to bytes."""
    found: list[tuple[str, str]] = []

    def walk(where: str, doc: dict) -> None:
        if "mediaType" in doc:
            found.append((where, doc["mediaType"]))
        if "config" in doc:
            found.append((f"{where} config", doc["config"]["mediaType"]))
        for i, layer in enumerate(doc.get("layers") or ()):
            found.append((f"{where} layer {i}", layer["mediaType"]))
        for entry in doc.get("manifests") or ():
            found.append((f"{where} entry {entry['digest']}", entry["mediaType"]))
            walk(entry["digest"], json.loads(read(f"blobs/sha256/{entry['digest'][7:]}")))

    walk("index.json", json.loads(read("index.json")))
    return found


def archive_reader(path: str):
    def read(name: str) -> bytes:
        with tarfile.open(path) as tar:
            return tar.extractfile(name).read()
    return read


def directory_reader(root: str):
    def read(name: str) -> bytes:
        with open(os.path.join(root, name), "rb") as f:
            return f.read()
    return read


def the_manifest(read) -> dict:
    [entry] = {e["digest"]: e for e in json.loads(read("index.json"))["manifests"]}.values()
    return json.loads(read(f"blobs/sha256/{entry['digest'][7:]}"))


def registry_manifest(host: str, repository: str, reference: str) -> tuple[str, dict]:
    request = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{reference}",
                                     headers={"Accept": _ACCEPT})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"], json.loads(response.read())


def manifest_media_types(doc: dict) -> list[str]:
    return [doc["mediaType"], doc["config"]["mediaType"], *(layer["mediaType"] for layer in doc["layers"])]


def not_oci(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(where, t) for where, t in found if not t.startswith("application/vnd.oci.")]


# --- one build over a Docker v2 base, several outputs -------------------------------------------


@dataclass(frozen=True)
class Built:
    root: str
    context: str
    base: str                 # the base reference
    base_manifest: dict       # as the registry serves it (Docker schema 2)
    host: str
    image_id: str
    oci_archive: str
    oci_layout: str
    docker_archive: str
    tmp: str

    def build(self, *args: str, check: bool = True):
        return build_image("--root", self.root, "--build-arg", f"BASE={self.base}", "--progress", "plain",
                           *args, self.context, check=check)

    def cli(self, command: str, *args: str):
        return build_image(command, "--root", self.root, *args)


@pytest.fixture(scope="module")
def built(busybox_docker_v2, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oci-mediatypes")
    _, base_manifest = registry_manifest(busybox_docker_v2.host, "busybox-v2s2", "latest")
    out = Built(root=str(tmp / "store"), context=write_context(tmp / "ctx", {"Dockerfile": DOCKERFILE,
                                                                             "hello.txt": "hello\n"}),
                base=busybox_docker_v2.reference, base_manifest=base_manifest, host=busybox_docker_v2.host,
                image_id="", oci_archive=str(tmp / "oci.tar"), oci_layout=str(tmp / "layout"),
                docker_archive=str(tmp / "docker.tar"), tmp=str(tmp))
    os.makedirs(out.root)
    iid = str(tmp / "iid")
    out.build("-t", "app:1", "--iidfile", iid, "-o", f"type=oci,dest={out.oci_archive}",
              "-o", f"type=oci,dest={out.oci_layout},tar=false", "-o", f"type=docker,dest={out.docker_archive}")
    with open(iid) as f:
        return Built(**{**out.__dict__, "image_id": f.read()})


@needs_build
@pytest.mark.parametrize("kind", ["archive", "layout"])
def test_oci_output_names_only_oci_media_types(built, kind):
    # The base really is Docker-typed: otherwise this test would prove nothing.
    assert manifest_media_types(built.base_manifest) == [
        media.DOCKER_MANIFEST, media.DOCKER_CONFIG, media.DOCKER_LAYER_GZIP]
    read = archive_reader(built.oci_archive) if kind == "archive" else directory_reader(built.oci_layout)
    found = layout_media_types(read)
    assert not_oci(found) == []
    manifest = the_manifest(read)
    assert manifest_media_types(manifest) == [media.OCI_MANIFEST, media.OCI_CONFIG] + [media.OCI_LAYER_GZIP] * 3
    # Same bytes: the base layer keeps its digest and size, the config (image ID) is the build's.
    assert manifest["layers"][0]["digest"] == built.base_manifest["layers"][0]["digest"]
    assert manifest["layers"][0]["size"] == built.base_manifest["layers"][0]["size"]
    assert manifest["config"]["digest"] == built.image_id


@needs_build
def test_umoci_unpacks_and_runc_runs_the_oci_archive(built, tmp_path):
    assert run_oci_archive(built.oci_archive, str(tmp_path), tag="1") == "hello\nbuilt\n"


@needs_build
def test_buildah_reads_and_runs_the_oci_archive(built, tmp_path):
    storage = ["--root", str(tmp_path / "storage"), "--runroot", str(tmp_path / "run"), "--storage-driver", "vfs"]

    def buildah(*args: str) -> str:
        proc = subprocess.run(["buildah", *storage, *args], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"buildah {' '.join(args)} failed: {proc.stderr}"
        return proc.stdout

    try:
        container = buildah("from", "--quiet", f"oci-archive:{built.oci_archive}").strip()
        assert buildah("run", "--isolation", "chroot", container, "--", "cat", "/hello.txt") == "hello\nbuilt\n"
    finally:
        subprocess.run(["buildah", *storage, "rm", "--all"], capture_output=True)


@needs_build
def test_save_format_oci_has_only_oci_types_even_for_the_pulled_docker_base(built, tmp_path):
    cases = (("app:1", "1", built.image_id), (built.base, "latest", built.base_manifest["config"]["digest"]))
    for name, tag, expected_config in cases:
        archive = str(tmp_path / f"saved-{tag}.tar")
        built.cli("save", "--format", "oci", "-o", archive, name)
        read = archive_reader(archive)
        assert not_oci(layout_media_types(read)) == []
        assert the_manifest(read)["config"]["digest"] == expected_config
        assert run_oci_archive(archive, str(tmp_path / f"run-{tag}"), ["sh", "-c", "echo ran"], tag=tag) == "ran\n"


@needs_build
def test_pushed_oci_manifest_has_only_oci_types(built):
    name = f"{built.host}/app-pushed:1"
    built.build("-o", f"type=image,name={name},push=true")  # oci-mediatypes defaults to true
    _, pushed = registry_manifest(built.host, "app-pushed", "1")
    assert manifest_media_types(pushed) == [media.OCI_MANIFEST, media.OCI_CONFIG] + [media.OCI_LAYER_GZIP] * 3
    assert pushed["config"]["digest"] == built.image_id

    # `build-image push` of the built image: OCI throughout as well.
    built.cli("tag", "app:1", f"{built.host}/app-cli:1")
    built.cli("push", f"{built.host}/app-cli:1")
    _, cli_pushed = registry_manifest(built.host, "app-cli", "1")
    assert cli_pushed == pushed


@needs_build
def test_push_of_a_pulled_docker_image_keeps_its_manifest(built):
    # docker push sends an image as it came: same family, same bytes, same digest.
    built.cli("tag", built.base, f"{built.host}/base-copy:1")
    built.cli("push", f"{built.host}/base-copy:1")
    digest, pushed = registry_manifest(built.host, "base-copy", "1")
    base_digest, _ = registry_manifest(built.host, "busybox-v2s2", "latest")
    assert digest == base_digest and pushed == built.base_manifest


@needs_build
@pytest.mark.parametrize("value, manifest_type, config_type, layer_type", [
    ("true", media.OCI_MANIFEST, media.OCI_CONFIG, media.OCI_LAYER_GZIP),
    ("false", media.DOCKER_MANIFEST, media.DOCKER_CONFIG, media.DOCKER_LAYER_GZIP),
])
def test_oci_mediatypes_on_push(built, value, manifest_type, config_type, layer_type):
    repository = f"app-mediatypes-{value}"
    built.build("-o", f"type=image,name={built.host}/{repository}:1,push=true,oci-mediatypes={value}")
    _, pushed = registry_manifest(built.host, repository, "1")
    assert manifest_media_types(pushed) == [manifest_type, config_type] + [layer_type] * 3
    assert pushed["config"]["digest"] == built.image_id
    oci_layers = [layer["digest"] for layer in the_manifest(archive_reader(built.oci_archive))["layers"]]
    assert [layer["digest"] for layer in pushed["layers"]] == oci_layers


@needs_build
def test_docker_archive_keeps_docker_types_and_the_same_layers(built, tmp_path):
    read = archive_reader(built.docker_archive)
    found = dict(layout_media_types(read))
    assert found.pop("index.json") == media.OCI_INDEX  # the layout's own index.json is always OCI's
    assert {t for t in found.values() if not t.startswith("application/vnd.docker.")} == set()
    manifest = the_manifest(read)
    assert manifest_media_types(manifest) == [media.DOCKER_MANIFEST, media.DOCKER_CONFIG] + [media.DOCKER_LAYER_GZIP] * 3
    oci_manifest = the_manifest(archive_reader(built.oci_archive))
    assert [layer["digest"] for layer in manifest["layers"]] == [layer["digest"] for layer in oci_manifest["layers"]]
    with tarfile.open(built.docker_archive) as tar:
        [entry] = json.load(tar.extractfile("manifest.json"))
    assert entry["Layers"] == [f"blobs/sha256/{layer['digest'][7:]}" for layer in oci_manifest["layers"]]
    assert entry["Config"] == f"blobs/sha256/{built.image_id[7:]}"


@needs_build
def test_docker_archive_over_an_oci_base_has_docker_types(busybox_registry, store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "hello.txt": "hi\n"})
    archive = str(tmp_path / "docker.tar")
    build_image("--root", store_root, "--build-arg", f"BASE={busybox_registry.reference}",
                "-o", f"type=docker,dest={archive}", context)
    manifest = the_manifest(archive_reader(archive))
    assert manifest_media_types(manifest) == [media.DOCKER_MANIFEST, media.DOCKER_CONFIG] + [media.DOCKER_LAYER_GZIP] * 3


@needs_build
def test_image_id_is_the_same_in_every_output(built, tmp_path):
    saved = str(tmp_path / "saved-docker.tar")
    built.cli("save", "-o", saved, "app:1")
    configs = {
        "oci archive": the_manifest(archive_reader(built.oci_archive))["config"]["digest"],
        "oci layout": the_manifest(directory_reader(built.oci_layout))["config"]["digest"],
        "docker archive": the_manifest(archive_reader(built.docker_archive))["config"]["digest"],
        "save (docker)": the_manifest(archive_reader(saved))["config"]["digest"],
    }
    inspect = json.loads(built.cli("inspect", "app:1").stdout)
    assert set(configs.values()) == {built.image_id} == {inspect[0]["Id"]}
    # and the config bytes are the stored ones, unchanged
    config = archive_reader(built.oci_archive)(f"blobs/sha256/{built.image_id[7:]}")
    assert config == archive_reader(built.docker_archive)(f"blobs/sha256/{built.image_id[7:]}")


@needs_build
def test_oci_mediatypes_false_on_an_oci_output_writes_docker_types_as_buildkit_does(built, tmp_path):
    archive = str(tmp_path / "docker-typed-oci.tar")
    built.build("-o", f"type=oci,dest={archive},oci-mediatypes=false")
    manifest = the_manifest(archive_reader(archive))
    assert manifest_media_types(manifest) == [media.DOCKER_MANIFEST, media.DOCKER_CONFIG] + [media.DOCKER_LAYER_GZIP] * 3


@needs_build
def test_docker_output_with_oci_mediatypes_true_has_oci_types(built, tmp_path):
    archive = str(tmp_path / "oci-typed-docker.tar")
    built.build("-o", f"type=docker,dest={archive},oci-mediatypes=true")
    assert not_oci(layout_media_types(archive_reader(archive))) == []


# --- the attribute, and the conversion itself ----------------------------------------------------


def test_invalid_oci_mediatypes_is_a_one_line_error(tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n"})
    spec = f"type=oci,dest={tmp_path / 'x.tar'},oci-mediatypes=maybe"
    proc = build_image("--root", str(tmp_path / "store"), "-o", spec, context, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"ERROR: invalid output {spec!r}: oci-mediatypes must be true or false, not 'maybe'"]
    assert not os.path.exists(tmp_path / "x.tar")


@pytest.mark.parametrize("spec, expected", [
    ("type=oci,dest=a.tar", True), ("type=docker,dest=a.tar", False), ("type=image,name=a", True),
    ("type=registry,name=a", True), ("type=oci,dest=a,oci-mediatypes=false", False),
    ("type=docker,dest=a,oci-mediatypes=", True), ("type=image,name=a,oci-mediatypes=FALSE", False),
    ("type=docker,dest=a,oci-mediatypes=1", True),
])
def test_oci_mediatypes_defaults_follow_buildkit(spec, expected):
    assert OutputSpec.parse(spec).oci_mediatypes is expected


def test_bad_oci_mediatypes_fails_when_parsed():
    with pytest.raises(BuildError, match="oci-mediatypes must be true or false"):
        OutputSpec.parse("type=image,name=a,oci-mediatypes=yes please")


DOCKER_DOC = {
    "schemaVersion": 2, "mediaType": media.DOCKER_MANIFEST,
    "config": {"mediaType": media.DOCKER_CONFIG, "digest": "sha256:" + "c" * 64, "size": 3},
    "layers": [
        {"mediaType": media.DOCKER_LAYER_GZIP, "digest": "sha256:" + "1" * 64, "size": 10},
        {"mediaType": media.DOCKER_FOREIGN_LAYER, "digest": "sha256:" + "2" * 64, "size": 20,
         "urls": ["https://example.invalid/layer"]},
        {"mediaType": media.DOCKER_LAYER, "digest": "sha256:" + "3" * 64, "size": 30},
        {"mediaType": media.DOCKER_LAYER_ZSTD, "digest": "sha256:" + "4" * 64, "size": 40},
        {"mediaType": "application/vnd.example.custom", "digest": "sha256:" + "5" * 64, "size": 50},
    ],
}


def test_docker_manifest_converts_to_oci_and_back():
    oci = media.convert_document(DOCKER_DOC, oci=True)
    assert oci["mediaType"] == media.OCI_MANIFEST
    assert oci["config"] == {**DOCKER_DOC["config"], "mediaType": media.OCI_CONFIG}
    assert [layer["mediaType"] for layer in oci["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.example.custom",  # no counterpart: kept
    ]
    assert oci["layers"][1]["urls"] == ["https://example.invalid/layer"]
    assert [(d["digest"], d["size"]) for d in oci["layers"]] == [(d["digest"], d["size"]) for d in DOCKER_DOC["layers"]]
    assert media.convert_document(oci, oci=False) == DOCKER_DOC


def test_index_entries_convert_too():
    index = {"schemaVersion": 2, "mediaType": media.DOCKER_MANIFEST_LIST,
             "manifests": [{"mediaType": media.DOCKER_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 1,
                            "platform": {"os": "linux", "architecture": "amd64"}}]}
    oci = media.convert_document(index, oci=True)
    assert oci["mediaType"] == media.OCI_INDEX
    assert oci["manifests"] == [{**index["manifests"][0], "mediaType": media.OCI_MANIFEST}]


def test_a_manifest_already_in_the_family_keeps_its_bytes():
    data = json.dumps(DOCKER_DOC, indent=3).encode()  # not canonical: must come back untouched
    assert media.convert_manifest_bytes(data, oci=False) is data
    converted = media.convert_manifest_bytes(data, oci=True)
    assert converted != data and media.convert_manifest_bytes(converted, oci=True) is converted
