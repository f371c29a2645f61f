"""The registry client against Debian's docker-registry, a token server, and small fake registries."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import uuid
from http.server import BaseHTTPRequestHandler

import pytest

from builder.cache.blobs import BlobStore
from builder.errors import (AuthenticationError, DigestMismatch, NotFoundError, RegistryError,
                            UnsupportedMediaType)
from builder.image.media import OCI_INDEX, OCI_MANIFEST, Descriptor, Platform
from builder.registry import CredentialStore, Credentials, RegistryClient, parse_reference, select_manifest
from tests.support.baseimage import push_busybox_image, skopeo_copy, write_busybox_oci_layout
from tests.support.httpserver import LoopbackHTTPServer
from tests.support.registry import Registry
from tests.support.tokenauth import token_auth_registry

registry_tests = pytest.mark.registry
tools = pytest.mark.tools


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _skopeo_inspect(reference: str, raw: bool = False, creds: str | None = None) -> str:
    cmd = ["skopeo", "inspect", "--tls-verify=false"] + (["--raw"] if raw else [])
    cmd += ["--creds", creds] if creds else []
    return subprocess.run(cmd + [f"docker://{reference}"], check=True, capture_output=True, text=True).stdout


def _no_credentials(tmp_path) -> CredentialStore:
    return CredentialStore(config_path=str(tmp_path / "no-docker-config.json"))


# -- pull, resolve, push against a real registry ------------------------------------------------

@registry_tests
@tools
def test_pull_busybox_verifies_and_stores_every_blob(busybox_registry, store_root, tmp_path):
    events = []
    blobs = BlobStore(store_root)
    ref = parse_reference(busybox_registry.reference)
    with RegistryClient(credentials=_no_credentials(tmp_path),
                        progress=lambda d, done, total: events.append((d, done, total))) as client:
        pulled = client.pull(ref, blobs, Platform())

    assert pulled.manifest_digest == busybox_registry.digest  # what skopeo pushed
    assert pulled.reference.digest == busybox_registry.digest and pulled.reference.tag == "latest"
    assert pulled.manifest_media_type == OCI_MANIFEST
    manifest = json.loads(pulled.manifest)
    assert pulled.config_digest == manifest["config"]["digest"] == _sha(pulled.config)
    assert [layer.digest for layer in pulled.layers] == [layer["digest"] for layer in manifest["layers"]]
    config = json.loads(pulled.config)
    assert config["os"] == "linux" and len(config["rootfs"]["diff_ids"]) == 1
    stored = set(blobs.digests())
    assert stored == {pulled.manifest_digest, pulled.config_digest, pulled.layers[0].digest}
    assert all(blobs.verify(d) for d in stored)
    assert blobs.size(pulled.layers[0].digest) == pulled.layers[0].size
    assert events and events[-1] == (pulled.layers[0].digest, pulled.layers[0].size, pulled.layers[0].size)
    assert os.listdir(blobs.tmp_dir) == []

    # Pulling again finds every layer in the store and downloads nothing.
    events.clear()
    with RegistryClient(credentials=_no_credentials(tmp_path),
                        progress=lambda d, done, total: events.append(d)) as client:
        again = client.pull(ref, blobs, Platform())
    assert again == pulled and events == []


def _write_two_platform_layout(layout: str) -> dict[str, str]:
    """Turn the busybox layout into an index of linux/amd64 and linux/arm64/v8 (same layer, own configs)."""
    write_busybox_oci_layout(layout, "single")
    blob_dir = os.path.join(layout, "blobs", "sha256")

    def read(digest):
        with open(os.path.join(blob_dir, digest.split(":")[1]), "rb") as f:
            return f.read()

    def write(data):
        with open(os.path.join(blob_dir, _sha(data).split(":")[1]), "wb") as f:
            f.write(data)
        return {"digest": _sha(data), "size": len(data)}

    with open(os.path.join(layout, "index.json")) as f:
        amd64_desc = json.load(f)["manifests"][0]
    manifest = json.loads(read(amd64_desc["digest"]))
    digests = {}
    entries = []
    for arch, variant in (("arm64", "v8"), ("amd64", "")):
        config = json.loads(read(manifest["config"]["digest"]))
        config["architecture"] = arch
        if variant:
            config["variant"] = variant
        m = dict(manifest, config=dict(manifest["config"], **write(json.dumps(config).encode())))
        m_bytes = json.dumps(m).encode()
        platform = {"os": "linux", "architecture": arch} | ({"variant": variant} if variant else {})
        entries.append({"mediaType": OCI_MANIFEST, **write(m_bytes), "platform": platform})
        digests[f"linux/{arch}"] = _sha(m_bytes)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    digests["index"] = _sha(index)
    top = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, **write(index), "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(top, f)
    return digests


@registry_tests
@tools
def test_resolve_follows_an_index_to_the_platform_manifest(registry, tmp_path):
    digests = _write_two_platform_layout(str(tmp_path / "layout"))
    pushed = skopeo_copy(f"oci:{tmp_path / 'layout'}:multi", f"docker://{registry.host}/multi:latest", all_images=True)
    assert pushed == digests["index"]
    ref = parse_reference(f"{registry.host}/multi")

    with RegistryClient(credentials=_no_credentials(tmp_path)) as client:
        amd64 = client.resolve(ref, Platform())
        arm64 = client.resolve(ref, Platform("linux", "arm64"))
        aarch64 = client.resolve(ref, Platform("linux", "aarch64", "8"))
        by_digest = client.resolve(ref.with_digest(digests["index"]), Platform())
        with pytest.raises(NotFoundError) as missing:
            client.resolve(ref, Platform("linux", "s390x"))

    assert amd64[0] == digests["linux/amd64"] and amd64[2] == OCI_MANIFEST
    assert _sha(amd64[1]) == amd64[0]
    assert json.loads(amd64[1])["layers"]
    assert arm64[0] == aarch64[0] == digests["linux/arm64"]
    assert by_digest == amd64
    assert "linux/s390x" in str(missing.value) and "linux/arm64/v8" in str(missing.value)


@registry_tests
@tools
def test_push_index_with_client_then_skopeo_reads_it(registry, tmp_path, store_root):
    layout = tmp_path / "layout"
    digests = _write_two_platform_layout(str(layout))
    blobs = BlobStore(store_root)
    for name in os.listdir(layout / "blobs" / "sha256"):
        blobs.put_bytes((layout / "blobs" / "sha256" / name).read_bytes(), "sha256:" + name)
    index = blobs.get_bytes(digests["index"])

    with RegistryClient(credentials=_no_credentials(tmp_path)) as client:
        digest = client.push(parse_reference(f"{registry.host}/pushed/index:v1"), blobs, index, OCI_INDEX)

    assert digest == digests["index"]
    assert _skopeo_inspect(f"{registry.host}/pushed/index:v1", raw=True).encode() == index
    assert json.loads(_skopeo_inspect(f"{registry.host}/pushed/index:v1"))["Architecture"] == "amd64"


@registry_tests
@tools
def test_push_pulled_image_to_another_repository(busybox_registry, store_root, tmp_path):
    blobs = BlobStore(store_root)
    target = parse_reference(f"{busybox_registry.host}/copies/busybox-{uuid.uuid4().hex[:8]}:v1")
    uploads = []
    with RegistryClient(credentials=_no_credentials(tmp_path),
                        progress=lambda d, done, total: uploads.append(d)) as client:
        pulled = client.pull(parse_reference(busybox_registry.reference), blobs, Platform())
        uploads.clear()
        digest = client.push(target, blobs, pulled.manifest, pulled.manifest_media_type)
        # Pushing again uploads nothing new: every blob answers HEAD with 200.
        assert client.push(target, blobs, pulled.manifest, pulled.manifest_media_type) == digest

    assert digest == pulled.manifest_digest
    assert set(uploads) == {pulled.config_digest, pulled.layers[0].digest}
    info = json.loads(_skopeo_inspect(str(target)))
    assert info["Digest"] == digest and info["RepoTags"] == ["v1"]
    assert info["Layers"] == [pulled.layers[0].digest]


@registry_tests
def test_unknown_tag_and_repository_are_not_found(busybox_registry, tmp_path):
    with RegistryClient(credentials=_no_credentials(tmp_path)) as client:
        with pytest.raises(NotFoundError) as tag:
            client.resolve(parse_reference(f"{busybox_registry.host}/busybox:no-such-tag"), Platform())
        with pytest.raises(NotFoundError) as repo:
            client.resolve(parse_reference(f"{busybox_registry.host}/nobody/here"), Platform())
    assert f"{busybox_registry.host}/busybox:no-such-tag" in str(tag.value)
    assert "MANIFEST_UNKNOWN" in str(tag.value)
    assert f"{busybox_registry.host}/nobody/here:latest" in str(repo.value)


def test_unreachable_registry_is_a_one_line_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free now that the socket is closed: nothing listens there
    with RegistryClient(credentials=_no_credentials(tmp_path), timeout=5) as client:
        with pytest.raises(RegistryError) as info:
            client.resolve(parse_reference(f"127.0.0.1:{port}/app:latest"), Platform())
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "refused" in message.lower()
    assert "\n" not in message


# -- Basic auth and Docker's credential sources --------------------------------------------------

@registry_tests
@tools
def test_basic_auth_pull_and_wrong_password(tmp_path, store_root):
    with Registry(htpasswd=("alice", "s3cret")) as reg:
        digest = push_busybox_image(reg.host, auth=("alice", "s3cret"))
        ref = parse_reference(f"{reg.host}/busybox")
        good = CredentialStore(config_path=str(tmp_path / "none.json"),
                               explicit={reg.host: Credentials("alice", "s3cret")})
        with RegistryClient(credentials=good) as client:
            pulled = client.pull(ref, BlobStore(store_root), Platform())
        assert pulled.manifest_digest == digest

        wrong = CredentialStore(config_path=str(tmp_path / "none.json"),
                                explicit={reg.host: Credentials("alice", "wrong")})
        with RegistryClient(credentials=wrong) as client, pytest.raises(AuthenticationError) as bad:
            client.resolve(ref, Platform())
        assert reg.host in str(bad.value) and "incorrect username or password" in str(bad.value)

        with RegistryClient(credentials=_no_credentials(tmp_path)) as client, \
                pytest.raises(AuthenticationError) as anonymous:
            client.resolve(ref, Platform())
        assert reg.host in str(anonymous.value) and "requires authentication" in str(anonymous.value)


@registry_tests
@tools
def test_credentials_from_docker_config_json(tmp_path, store_root, monkeypatch):
    with Registry(htpasswd=("bob", "pa:ss")) as reg:
        push_busybox_image(reg.host, auth=("bob", "pa:ss"))
        config_dir = tmp_path / "docker-config"
        config_dir.mkdir()
        auth = base64.b64encode(b"bob:pa:ss").decode()
        (config_dir / "config.json").write_text(json.dumps({"auths": {f"http://{reg.host}": {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
        with RegistryClient() as client:
            digest, _, _ = client.resolve(parse_reference(f"{reg.host}/busybox"), Platform())
        assert digest.startswith("sha256:")


def test_credential_helper_programs_are_asked(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fake"
    helper.write_text('#!/bin/sh\nread server\n'
                      'case "$server" in\n'
                      '  registry.example:5000) echo \'{"Username":"carol","Secret":"from-helper"}\' ;;\n'
                      '  https://index.docker.io/v1/) echo \'{"Username":"<token>","Secret":"refresh"}\' ;;\n'
                      '  *) echo "credentials not found in native keychain"; exit 1 ;;\n'
                      'esac\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "credsStore": "fake",
        "credHelpers": {"helper-only.example": "missing-helper"},
        "auths": {"other.example": {"auth": base64.b64encode(b"dave:pw").decode()}},
    }))
    store = CredentialStore(config_path=str(config))
    assert store.get("registry.example:5000") == Credentials("carol", "from-helper")
    assert store.get("docker.io") == Credentials(identity_token="refresh")
    assert store.get("other.example") == Credentials("dave", "pw")  # the store has none: auths is next
    assert store.get("unknown.example") is None
    with pytest.raises(AuthenticationError, match="docker-credential-missing-helper"):
        store.get("helper-only.example")


# -- Bearer tokens from a token server the registry trusts ----------------------------------------

@pytest.fixture
def token_registry(tmp_path):
    """A docker-registry with `auth: token:` trusting a fresh self-signed cert, and its token server."""
    with token_auth_registry(str(tmp_path), ("erin", "t0ken-pw")) as (reg, tokens):
        yield reg, tokens


@registry_tests
def test_bearer_token_flow_pull_push_and_token_cache(token_registry, tmp_path, store_root):
    reg, tokens = token_registry
    creds = CredentialStore(config_path=str(tmp_path / "none.json"),
                            explicit={reg.host: Credentials("erin", "t0ken-pw")})
    layout = write_busybox_oci_layout(str(tmp_path / "layout"), "latest")
    blobs = BlobStore(store_root)
    for name in os.listdir(os.path.join(layout, "blobs", "sha256")):
        with open(os.path.join(layout, "blobs", "sha256", name), "rb") as f:
            blobs.put_bytes(f.read(), "sha256:" + name)
    with open(os.path.join(layout, "index.json")) as f:
        manifest_digest = json.load(f)["manifests"][0]["digest"]
    manifest = blobs.get_bytes(manifest_digest)
    ref = parse_reference(f"{reg.host}/team/busybox:latest")

    with RegistryClient(credentials=creds) as client:
        assert client.push(ref, blobs, manifest, OCI_MANIFEST) == manifest_digest
        resolved = client.resolve(ref, Platform())
        pulled = client.pull(ref, BlobStore(str(tmp_path / "second-store")), Platform())

    assert resolved[0] == pulled.manifest_digest == manifest_digest
    assert pulled.layers[0].digest in set(BlobStore(str(tmp_path / "second-store")).digests())
    # One token per scope, reused by every later request for that scope.
    scopes = [r["scope"] for r in tokens.requests]
    assert scopes == [["repository:team/busybox:pull,push"], ["repository:team/busybox:pull"]]
    assert all(r["service"] == ["test-registry"] for r in tokens.requests)

    wrong = CredentialStore(config_path=str(tmp_path / "none.json"),
                            explicit={reg.host: Credentials("erin", "nope")})
    with RegistryClient(credentials=wrong) as client, pytest.raises(AuthenticationError) as bad:
        client.resolve(ref, Platform())
    assert reg.host in str(bad.value) and "incorrect username or password" in str(bad.value)


# -- Misbehaving registries, served in-process -----------------------------------------------------

DROP = 0  # a FakeRegistry status: send half the body, then drop the connection


class FakeRegistry(LoopbackHTTPServer):
    """A registry stand-in: ROUTES maps a path to a list of (status, headers, body) answers, the
    last one repeating; every request path and Accept header is logged."""

    def __init__(self, routes: dict[str, list[tuple[int, dict, bytes]]]):
        self.routes = routes
        self.log: list[str] = []
        self.accept: dict[str, str] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.log.append(self.path)
                fake.accept[self.path] = self.headers.get("Accept", "")
                answers = fake.routes.get(self.path) or [(404, {}, b'{"errors":[{"code":"NOT_FOUND"}]}')]
                status, headers, body = answers.pop(0) if len(answers) > 1 else answers[0]
                if status == DROP:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


def _image(layer: bytes, served_layer: bytes | None = None) -> tuple[bytes, dict]:
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _sha(layer), "size": len(layer)}],
    }).encode()
    routes = {
        "/v2/app/manifests/latest": [(200, {"Content-Type": OCI_MANIFEST}, manifest)],
        f"/v2/app/blobs/{_sha(config)}": [(200, {}, config)],
        f"/v2/app/blobs/{_sha(layer)}": [(200, {}, served_layer if served_layer is not None else layer)],
    }
    return manifest, routes


def test_corrupted_layer_is_rejected_and_nothing_stored(tmp_path, store_root):
    layer = b"the real layer content" * 100
    corrupt = bytearray(layer)
    corrupt[500] ^= 0xFF
    _, routes = _image(layer, bytes(corrupt))
    blobs = BlobStore(store_root)
    with FakeRegistry(routes) as fake, RegistryClient(credentials=_no_credentials(tmp_path)) as client:
        with pytest.raises(DigestMismatch) as info:
            client.pull(parse_reference(f"{fake.host}/app"), blobs, Platform())
    assert info.value.expected == _sha(layer) and info.value.actual == _sha(bytes(corrupt))
    assert list(blobs.digests()) == [] and os.listdir(blobs.tmp_dir) == []


def test_manifest_not_matching_its_digest_is_rejected(tmp_path):
    manifest, routes = _image(b"layer")
    routes["/v2/app/manifests/latest"] = [(200, {"Content-Type": OCI_MANIFEST,
                                                 "Docker-Content-Digest": _sha(b"other")}, manifest)]
    pinned = _sha(b"something else")
    routes[f"/v2/app/manifests/{pinned}"] = [(200, {"Content-Type": OCI_MANIFEST}, manifest)]
    with FakeRegistry(routes) as fake, RegistryClient(credentials=_no_credentials(tmp_path)) as client:
        with pytest.raises(DigestMismatch):
            client.resolve(parse_reference(f"{fake.host}/app"), Platform())
        with pytest.raises(DigestMismatch) as info:
            client.resolve(parse_reference(f"{fake.host}/app@{pinned}"), Platform())
    assert info.value.expected == pinned and info.value.actual == _sha(manifest)


def test_server_errors_are_retried_three_times(tmp_path, store_root):
    manifest, routes = _image(b"layer bytes")
    unavailable = (503, {}, b"")
    routes["/v2/app/manifests/latest"] = [unavailable, unavailable, routes["/v2/app/manifests/latest"][0]]
    routes["/v2/down/manifests/latest"] = [(502, {}, b"")]
    with FakeRegistry(routes) as fake, RegistryClient(credentials=_no_credentials(tmp_path)) as client:
        pulled = client.pull(parse_reference(f"{fake.host}/app"), BlobStore(store_root), Platform())
        assert pulled.manifest == manifest
        assert fake.log.count("/v2/app/manifests/latest") == 3
        with pytest.raises(RegistryError) as info:
            client.resolve(parse_reference(f"{fake.host}/down"), Platform())
        assert fake.log.count("/v2/down/manifests/latest") == 3
    assert "502" in str(info.value) and fake.host in str(info.value)


def test_dropped_download_starts_again(tmp_path, store_root):
    layer = os.urandom(200_000)
    _, routes = _image(layer)
    routes[f"/v2/app/blobs/{_sha(layer)}"].insert(0, (DROP, {}, layer))
    blobs = BlobStore(store_root)
    with FakeRegistry(routes) as fake, RegistryClient(credentials=_no_credentials(tmp_path)) as client:
        pulled = client.pull(parse_reference(f"{fake.host}/app"), blobs, Platform())
    assert fake.log.count(f"/v2/app/blobs/{_sha(layer)}") == 2
    assert blobs.get_bytes(pulled.layers[0].digest) == layer
    assert os.listdir(blobs.tmp_dir) == []


def test_schema1_manifest_is_unsupported(tmp_path):
    schema1 = json.dumps({"schemaVersion": 1, "name": "app", "tag": "latest", "fsLayers": []}).encode()
    routes = {"/v2/app/manifests/latest": [
        (200, {"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"}, schema1)]}
    with FakeRegistry(routes) as fake, RegistryClient(credentials=_no_credentials(tmp_path)) as client:
        with pytest.raises(UnsupportedMediaType, match="schema 1"):
            client.resolve(parse_reference(f"{fake.host}/app"), Platform())


def test_manifest_accept_header_names_oci_and_docker_types(tmp_path):
    _, routes = _image(b"x")
    with FakeRegistry(routes) as fake, RegistryClient(credentials=_no_credentials(tmp_path)) as client:
        client.resolve(parse_reference(f"{fake.host}/app"), Platform())
    accept = fake.accept["/v2/app/manifests/latest"]
    for media_type in (OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                       "application/vnd.docker.distribution.manifest.list.v2+json"):
        assert media_type in accept


# -- Platform choice inside an index ---------------------------------------------------------------

def _entry(name: str, os_="linux", arch="amd64", variant="") -> Descriptor:
    return Descriptor(OCI_MANIFEST, _sha(name.encode()), 1, (("name", name),), Platform(os_, arch, variant))


INDEX = [
    Descriptor(OCI_MANIFEST, _sha(b"attestation"), 1),  # no platform (BuildKit attestations): never chosen
    _entry("arm-v6", arch="arm", variant="v6"),
    _entry("amd64"),
    _entry("arm64", arch="arm64"),
    _entry("arm-v7", arch="arm", variant="v7"),
    _entry("windows", os_="windows"),
]


@pytest.mark.parametrize("wanted, chosen", [
    (Platform(), "amd64"),
    (Platform("linux", "x86_64"), "amd64"),
    (Platform("linux", "arm64", "v8"), "arm64"),
    (Platform("linux", "aarch64"), "arm64"),
    (Platform("linux", "arm"), "arm-v7"),
    (Platform("linux", "arm", "v7"), "arm-v7"),
    (Platform("linux", "arm", "v6"), "arm-v6"),
    (Platform("linux", "arm", "v8"), "arm-v7"),   # newest variant that still runs
    (Platform("windows", "amd64"), "windows"),
    (Platform("linux", "arm", "v5"), None),
    (Platform("linux", "riscv64"), None),
])
def test_select_manifest_matches_platform_and_variant(wanted, chosen):
    found = select_manifest(INDEX, wanted)
    assert (dict(found.annotations)["name"] if found else None) == chosen
