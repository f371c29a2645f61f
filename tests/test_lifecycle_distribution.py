"""`pull`, `push`, `login`, `logout` against Debian's docker-registry, checked with skopeo."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.httpserver import LoopbackHTTPServer
from tests.support.images import skopeo_inspect
from tests.support.registry import Registry
from tests.support.tokenauth import token_auth_registry
from tests.test_cli_images import cli, import_image, rootfs_tar

pytestmark = [pytest.mark.registry, pytest.mark.tools]


def layer_lines(output: str) -> dict[str, str]:
    """`<12 hex>: status` lines -> {short id: last status}."""
    found = {}
    for line in output.splitlines():
        short, sep, status = line.partition(": ")
        if sep and len(short) == 12 and all(c in "0123456789abcdef" for c in short):
            found[short] = status
    return found


def test_pull_an_image_skopeo_pushed(store_root, busybox_registry):
    out = cli(store_root, "pull", busybox_registry.reference).stdout
    lines = out.splitlines()
    assert lines[0] == "latest: Pulling from busybox"
    assert set(layer_lines(out).values()) == {"Pull complete"}
    assert f"Digest: {busybox_registry.digest}" in lines
    assert lines[-2:] == [f"Status: Downloaded newer image for {busybox_registry.reference}", busybox_registry.reference]
    [doc] = json.loads(cli(store_root, "inspect", busybox_registry.reference).stdout)
    assert doc["RepoDigests"] == [f"{busybox_registry.host}/busybox@{busybox_registry.digest}"]
    again = cli(store_root, "pull", busybox_registry.reference).stdout
    assert set(layer_lines(again).values()) == {"Already exists"}
    assert f"Status: Image is up to date for {busybox_registry.reference}" in again


def test_push_read_by_skopeo_then_mounted_across_repositories(store_root, registry, tmp_path):
    image_id = import_image(store_root, tmp_path, f"{registry.host}/team/app:1", {"etc/app": b"x" * 4000},
                            'CMD ["app"]')
    out = cli(store_root, "push", f"{registry.host}/team/app:1").stdout
    lines = out.splitlines()
    assert lines[0] == f"The push refers to repository [{registry.host}/team/app]"
    assert list(layer_lines(out).values()) == ["Pushed"]
    manifest_digest = lines[-1].split()[2]
    assert lines[-1].startswith("1: digest: sha256:") and lines[-1].split()[3] == "size:"
    info = skopeo_inspect(f"docker://{registry.host}/team/app:1", "--tls-verify=false")
    assert info["Digest"] == manifest_digest
    config = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config",
                                        f"docker://{registry.host}/team/app:1"],
                                       check=True, capture_output=True, text=True).stdout)
    assert config["config"]["Cmd"] == ["app"]
    [doc] = json.loads(cli(store_root, "inspect", f"{registry.host}/team/app:1").stdout)
    assert doc["Id"] == image_id and doc["RepoDigests"] == [f"{registry.host}/team/app@{manifest_digest}"]

    # the same layer into another repository: mounted from the first, not uploaded again
    cli(store_root, "tag", f"{registry.host}/team/app:1", f"{registry.host}/other/app:2")
    out = cli(store_root, "push", f"{registry.host}/other/app:2").stdout
    assert list(layer_lines(out).values()) == ["Mounted from team/app"]
    assert skopeo_inspect(f"docker://{registry.host}/other/app:2", "--tls-verify=false")["Digest"] == manifest_digest
    # and again into the first: already there
    out = cli(store_root, "push", f"{registry.host}/team/app:1").stdout
    assert list(layer_lines(out).values()) == ["Layer already exists"]


def test_chunked_upload(store_root, registry, tmp_path):
    """Blobs larger than the chunk size go up in PATCH requests; the registry checks the digest."""
    from builder.image.manifest import read_image
    from builder.registry.client import RegistryClient
    from builder.registry.reference import parse_reference
    from builder.store import Store

    import_image(store_root, tmp_path, "big", {"data": os.urandom(300_000)})
    store = Store(store_root)
    digest = store.images.resolve("docker.io/library/big:latest")
    image = read_image(store.blobs, digest)
    assert image.layers[0].size > 3 * 65536
    ref = parse_reference(f"{registry.host}/big:chunked")
    seen = []
    with RegistryClient(chunk_size=65536, progress=lambda d, done, total: seen.append(done)) as client:
        client.push(ref, store.blobs, store.blobs.get_bytes(digest), image.manifest.media_type)
    assert len([n for n in seen if n % 65536 == 0]) >= 3  # progress after each whole chunk
    fresh = str(tmp_path / "fresh")
    cli(fresh, "pull", str(ref))  # every blob verified against its digest on the way back
    assert json.loads(cli(fresh, "inspect", str(ref)).stdout)[0]["Id"] == image.image_id


def test_login_logout_with_basic_auth(store_root, tmp_path):
    docker_config = str(tmp_path / "docker-config")
    env = {"DOCKER_CONFIG": docker_config}
    with Registry(htpasswd=("alice", "s3cret")) as reg:
        proc = cli(store_root, "login", "-u", "alice", "-p", "wrong", reg.host, check=False, env=env)
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[-1] == f"ERROR: login to {reg.host} failed: incorrect username or password"
        assert not os.path.exists(docker_config)

        proc = subprocess.run([sys.executable, "-m", "builder.cli", "login", "-u", "alice", "--password-stdin",
                               reg.host, "--root", store_root], input="s3cret\n", capture_output=True, text=True,
                              env={**os.environ, **env}, check=True)
        assert proc.stdout == "Login Succeeded\n"
        path = os.path.join(docker_config, "config.json")
        with open(path) as f:
            auths = json.load(f)["auths"]
        assert base64.b64decode(auths[reg.host]["auth"]) == b"alice:s3cret"
        assert os.stat(path).st_mode & 0o777 == 0o600

        # the stored credentials are what push and pull use
        import_image(store_root, tmp_path, f"{reg.host}/private/app:1", {"f": b"secret data"})
        cli(store_root, "push", f"{reg.host}/private/app:1", env=env)
        cli(str(tmp_path / "fresh"), "pull", f"{reg.host}/private/app:1", env=env)

        assert cli(store_root, "logout", reg.host, env=env).stdout == f"Removing login credentials for {reg.host}\n"
        assert cli(store_root, "logout", reg.host, env=env).stdout == f"Not logged in to {reg.host}\n"
        proc = cli(str(tmp_path / "fresh2"), "pull", f"{reg.host}/private/app:1", env=env, check=False)
        assert proc.returncode == 1 and "requires authentication" in proc.stderr


def test_registry_errors_are_one_line(store_root, registry, tmp_path):
    for args, message in (
        (["pull", f"{registry.host}/nothere:1"], "not found"),
        (["pull", "127.0.0.1:1/x:1"], "cannot reach registry 127.0.0.1:1"),
        (["push", f"{registry.host}/never/made:1"], "An image does not exist locally with the tag"),
        (["login", "-u", "a", "-p", "b", "127.0.0.1:1"], "cannot reach registry 127.0.0.1:1"),
    ):
        proc = cli(store_root, *args, check=False)
        assert proc.returncode == 1, args
        error = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
        assert len(error) == 1 and message in error[0], (args, proc.stderr)
    assert os.listdir(os.path.join(store_root, "blobs", "sha256")) == []


def test_pull_all_tags(store_root, registry, tmp_path):
    repository = f"{registry.host}/team/app"
    shared = rootfs_tar(str(tmp_path / "shared.tar"), {"etc/app": b"shared layer\n" * 300})
    ids = {tag: cli(store_root, "import", shared, f"{repository}:{tag}", "-c", f"ENV V={tag}").stdout.strip()
           for tag in ("v1", "v2")}
    ids["v3"] = import_image(store_root, tmp_path, f"{repository}:v3", {"etc/other": b"y" * 3000})
    for tag in ids:
        cli(store_root, "push", f"{repository}:{tag}")

    fresh = str(tmp_path / "fresh")
    lines = cli(fresh, "pull", "--all-tags", repository).stdout.splitlines()
    # the pushed (gzip) layers: the pushing store keeps its own uncompressed
    layer = {tag: _layer_digest(fresh, f"{repository}:{tag}")[7:19] for tag in ids}
    assert layer["v1"] == layer["v2"] != layer["v3"]
    assert lines[-2:] == [f"Status: Downloaded newer image for {repository}", repository]
    # one block per tag, in the registry's order (distribution 2.8 lists them in directory order)
    blocks = [lines[i:i + 3] for i in range(0, len(lines) - 2, 3)]
    order = [block[0].partition(":")[0] for block in blocks]
    assert sorted(order) == ["v1", "v2", "v3"]
    for tag, block in zip(order, blocks):
        [doc] = json.loads(cli(fresh, "inspect", f"{repository}:{tag}").stdout)
        assert doc["Id"] == ids[tag]
        shared_seen_before = tag != "v3" and order.index(tag) > min(order.index("v1"), order.index("v2"))
        status = "Already exists" if shared_seen_before else "Pull complete"
        assert block == [f"{tag}: Pulling from team/app", f"{layer[tag]}: {status}",
                         f"Digest: {doc['RepoDigests'][0].partition('@')[2]}"]

    again = cli(fresh, "pull", "-a", repository).stdout
    assert set(layer_lines(again).values()) == {"Already exists"}
    assert again.splitlines()[-2:] == [f"Status: Image is up to date for {repository}", repository]
    assert cli(fresh, "pull", "-a", "-q", repository).stdout == f"{repository}\n"

    proc = cli(fresh, "pull", "-a", f"{repository}:v1", check=False)
    assert proc.returncode == 1 and proc.stderr == "ERROR: tag can't be used with --all-tags/-a\n"
    proc = cli(fresh, "pull", "-a", f"{registry.host}/no/such", check=False)
    assert proc.returncode == 1 and "tag list not found" in proc.stderr


def _layer_digest(root: str, name: str) -> str:
    from builder.image.manifest import read_image
    from builder.store import Store

    store = Store(root)
    return read_image(store.blobs, store.images.resolve(name)).layers[0].digest


class PagedTags(LoopbackHTTPServer):
    """A registry stand-in serving one repository's tag list in pages linked by `Link` headers
    (distribution 2.8 does not page), the first link relative, the second absolute."""

    def __init__(self, pages: list[list[str]]):
        self.requests: list[str] = []
        paged = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                paged.requests.append(self.path)
                query = parse_qs(urlsplit(self.path).query)
                index = int(query.get("page", ["0"])[0])
                body = json.dumps({"name": "paged", "tags": pages[index]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if index + 1 < len(pages):
                    target = f"/v2/paged/tags/list?n=2&page={index + 1}"
                    if index:
                        target = f"http://{paged.host}{target}"
                    self.send_header("Link", f'<{target}>; rel="next"')
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


def test_tag_list_follows_link_pages(tmp_path):
    from builder.registry import CredentialStore, RegistryClient, parse_reference

    with PagedTags([["1.0", "1.1"], ["2.0", "latest"], ["zz"]]) as server:
        with RegistryClient(credentials=CredentialStore(config_path=str(tmp_path / "none.json"))) as client:
            tags = client.list_tags(parse_reference(f"{server.host}/paged"), page_size=2)
    assert tags == ["1.0", "1.1", "2.0", "latest", "zz"]
    assert server.requests == ["/v2/paged/tags/list?n=2", "/v2/paged/tags/list?n=2&page=1",
                               "/v2/paged/tags/list?n=2&page=2"]


def test_login_logout_with_token_auth(store_root, tmp_path):
    env = {"DOCKER_CONFIG": str(tmp_path / "docker-config")}
    config_path = tmp_path / "docker-config" / "config.json"
    with token_auth_registry(str(tmp_path), ("erin", "t0ken-pw")) as (reg, tokens):
        proc = cli(store_root, "login", "-u", "erin", "-p", "wrong", reg.host, check=False, env=env)
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[-1].startswith(f"ERROR: authentication to {reg.host} failed: token server")
        assert "incorrect username or password" in proc.stderr and not config_path.exists()

        proc = cli(store_root, "login", "-u", "erin", "--password-stdin", reg.host, stdin=b"t0ken-pw\n", env=env)
        assert proc.stdout == b"Login Succeeded\n"
        # docker login asks the token server for a token with no scope, for the registry's service
        assert tokens.requests[-1] == {"scope": [], "service": ["test-registry"]}
        auths = json.loads(config_path.read_text())["auths"]
        assert base64.b64decode(auths[reg.host]["auth"]) == b"erin:t0ken-pw"

        # the saved credentials get the tokens push and pull need
        import_image(store_root, tmp_path, f"{reg.host}/private/app:1", {"f": b"secret data"})
        cli(store_root, "push", f"{reg.host}/private/app:1", env=env)
        assert ["repository:private/app:pull,push"] in [r["scope"] for r in tokens.requests]
        cli(str(tmp_path / "fresh"), "pull", f"{reg.host}/private/app:1", env=env)

        assert cli(store_root, "logout", reg.host, env=env).stdout == f"Removing login credentials for {reg.host}\n"
        assert reg.host not in json.loads(config_path.read_text()).get("auths", {})
        proc = cli(str(tmp_path / "fresh2"), "pull", f"{reg.host}/private/app:1", env=env, check=False)
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"ERROR: authentication to {reg.host} failed: token server")
        assert "(credentials required)" in proc.stderr
