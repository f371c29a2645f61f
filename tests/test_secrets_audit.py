"""The secrets audit: a build that uses a secret every way a RUN can (a file under /run/secrets, a
target path with a mode and owner, an environment variable, a secret from the environment), then
a search for the secret's value, plain and base64, everywhere a build leaves anything: every blob
of the store (layers decompressed), the config and its history, the progress output (plain and
rawjson), the cache records, the plan cache, the metadata file, every other file under the store
root (snapshots, names, caches), each output (OCI archive, docker archive, local tree), and an
exported build cache (`--cache-to type=local,mode=max`: its layers, its cache config and the
steps' facts that explain another machine's misses).
The run's figure: "secrets audit: N places checked, 0 leaks"."""

from __future__ import annotations

import base64
import gzip
import json
import os
import tarfile

import pytest

from tests.support.images import write_context
from tests.support.storelock import wait_until_unused
from tests.test_run_mount import build, builds

FILE_SECRET = "f1le-s3cret-0b9c27d4"
ENV_SECRET = "env-s3cret-5a17e6f2"


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, base64.b64encode(raw), base64.b64encode(raw).rstrip(b"="), raw[::-1]]


def _expanded(data: bytes) -> bytes:
    """DATA, decompressed if it is gzip (a layer), and its tar members' contents as they are."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return data
    return data


def _files_under(root: str):
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                yield path


def _tar_members(archive: str) -> dict[str, bytes]:
    with tarfile.open(archive) as tf:
        return {m.name: _expanded(tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()}


@builds
def test_no_secret_is_left_anywhere(store_root, busybox_registry, tmp_path, monkeypatch, record_property):
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(FILE_SECRET)
    monkeypatch.setenv("AUDIT_ENV_SECRET", ENV_SECRET)
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --mount=type=secret,id=token test -s /run/secrets/token && cp /run/secrets/token /dev/null && echo one > /one
RUN --mount=type=secret,id=token,target=/etc/app/token,mode=0440,uid=1000 wc -c < /etc/app/token > /count
RUN --mount=type=secret,id=token,env=TOKEN --mount=type=secret,id=envtoken,env=ENV_TOKEN \\
    [ "$TOKEN" = "$(cat /run/secrets/token 2>/dev/null || echo $TOKEN)" ] && [ -n "$ENV_TOKEN" ] && env > /env.txt.tmp \\
    && grep -v TOKEN /env.txt.tmp > /env.txt; rm -f /env.txt.tmp
RUN --mount=type=secret,id=envtoken sh -c 'sha256sum /run/secrets/envtoken > /sum'
""", "other.txt": "not secret\n"})
    secrets = ("--secret", f"id=token,src={secret_file}", "--secret", "id=envtoken,env=AUDIT_ENV_SECRET")
    oci, docker, local = tmp_path / "image.oci.tar", tmp_path / "image.docker.tar", tmp_path / "tree"
    metadata = tmp_path / "metadata.json"
    cache_dir = tmp_path / "exported-cache"
    plain = build(context, store_root, *secrets, "-t", "audit:1", "--metadata-file", str(metadata),
                  "--cache-to", f"type=local,dest={cache_dir},mode=max",
                  "-o", f"type=oci,dest={oci}", "-o", f"type=docker,dest={docker}",
                  "-o", f"type=local,dest={local}")
    rawjson = build(context, store_root, *secrets, "--no-cache", "--progress", "rawjson", "-t", "audit:2")
    wait_until_unused(store_root)  # what the store keeps: the rebuild's duplicate upper dirs are deleted

    places: dict[str, bytes] = {
        "progress (plain)": (plain.stdout + plain.stderr).encode(),
        "progress (rawjson)": (rawjson.stdout + rawjson.stderr).encode(),
        "metadata file": metadata.read_bytes(),
    }
    for path in _files_under(store_root):
        rel = os.path.relpath(path, store_root)
        kind = ("blob" if rel.startswith("blobs/") else "cache record" if rel.startswith("cache/records/")
                else "plan cache" if rel.startswith("cache/plans/") else "store file")
        with open(path, "rb") as f:
            places[f"{kind} {rel}"] = _expanded(f.read())
    for name, data in _tar_members(str(oci)).items():
        places[f"oci output {name}"] = data
    for name, data in _tar_members(str(docker)).items():
        places[f"docker output {name}"] = data
    for path in _files_under(str(local)):
        with open(path, "rb") as f:
            places[f"local output {os.path.relpath(path, local)}"] = f.read()
    facts = []
    for path in _files_under(str(cache_dir)):
        with open(path, "rb") as f:
            data = f.read()
        places[f"exported cache {os.path.relpath(path, cache_dir)}"] = _expanded(data)
        facts += [data] if data.startswith(b'{"dockerfile":') else []
    # The steps' facts are there, with the env each RUN saw, and a secret given as an env is not in it.
    [steps] = [json.loads(data)["steps"] for data in facts]
    [env_run] = [s for s in steps if "env=TOKEN" in s["text"]]
    assert env_run["facts"]["env"] and not [e for e in env_run["facts"]["env"] if "TOKEN=" in e]
    # the config and history are blobs too; name them so the figure says they were read
    index = json.loads(_tar_members(str(oci))["index.json"])
    manifest = json.loads(places[f"oci output blobs/sha256/{index['manifests'][0]['digest'][7:]}"])
    config = places[f"oci output blobs/sha256/{manifest['config']['digest'][7:]}"]
    places["config"] = config
    places["history"] = json.dumps(json.loads(config)["history"]).encode()
    assert len(json.loads(config)["history"]) >= 5

    leaks = [(where, secret) for where, data in places.items()
             for secret in (FILE_SECRET, ENV_SECRET) if any(form in data for form in _forms(secret))]
    figure = f"secrets audit: {len(places)} places checked, {len(leaks)} leaks"
    record_property("figure", figure)
    print(figure)
    assert not leaks, leaks
    assert (local / "count").read_text().strip() == str(len(FILE_SECRET))  # the secret was really used
    assert "ENV_TOKEN" not in (local / "env.txt").read_text()
