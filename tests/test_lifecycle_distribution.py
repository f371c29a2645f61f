"""`pull`, `push`, `login`, `logout` against Debian's docker-registry, checked with skopeo."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest

from tests.support.images import skopeo_inspect
from tests.support.registry import Registry
from tests.test_cli_images import cli, import_image

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

        proc = subprocess.run(["python3", "-m", "builder.cli", "login", "-u", "alice", "--password-stdin",
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
