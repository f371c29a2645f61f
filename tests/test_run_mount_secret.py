"""RUN --mount=type=secret and type=ssh: values given on the command line, readable by the step,
and found nowhere in the image, its history, its config or the cache key."""

from __future__ import annotations

import os
import socket

import pytest

from builder.errors import BuildError
from builder.session import SecretSource, SecretStore, SSHSource
from tests.support.images import step_lines, write_context
from tests.test_run_mount import added_layer_entries, build, builds, oci_archive_blobs, output_lines

SECRET = "pa55-w0rd-7e3a91"


# ---- --secret and --ssh values ----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("id=tok,src=/run/tok", SecretSource("tok", path="/run/tok")),
    ("id=tok,source=/run/tok", SecretSource("tok", path="/run/tok")),
    ("id=tok,env=TOKEN", SecretSource("tok", env="TOKEN")),
    ("type=env,id=tok,src=TOKEN", SecretSource("tok", env="TOKEN")),
    ("id=tok", SecretSource("tok")),
])
def test_secret_flag_forms(text, expected):
    assert SecretSource.parse(text) == expected


@pytest.mark.parametrize("text, message", [
    ("src=/x", "secret missing ID"),
    ("id=a,colour=red", "unexpected key 'colour' in 'colour=red'"),
    ("id=a,type=vault", 'unsupported secret type "vault"'),
])
def test_secret_flag_errors(text, message):
    with pytest.raises(BuildError, match=message):
        SecretSource.parse(text)


def test_secret_with_only_an_id_reads_the_variable_else_the_file(tmp_path):
    path = tmp_path / "tok"
    path.write_text("from file")
    store = SecretStore([SecretSource("TOK"), SecretSource(str(path))], environ={"TOK": "from env"})
    assert store.get("TOK") == b"from env"
    assert store.get(str(path)) == b"from file"
    assert store.get("other") is None


def test_missing_secret_file_fails_at_once(tmp_path):
    with pytest.raises(BuildError, match="failed to stat .*nope: no such file or directory"):
        SecretStore([SecretSource("x", path=str(tmp_path / "nope"))])


def test_ssh_flag_needs_a_socket(tmp_path):
    with pytest.raises(BuildError, match="SSH_AUTH_SOCK"):
        SSHSource.parse("default", environ={})
    (tmp_path / "key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    with pytest.raises(BuildError, match="not an agent socket"):
        SSHSource.parse(f"default={tmp_path / 'key'}")


# ---- builds -----------------------------------------------------------------------------------

@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return str(path)


def _secret_context(tmp_path, reference):
    return write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {reference}
RUN --mount=type=secret,id=token cat /run/secrets/token > /dev/null && \\
    ls -ln /run/secrets/token | tr -s ' ' | cut -d' ' -f1,3,4 && echo step one > /one
RUN --mount=type=secret,id=token,target=/etc/app/token,mode=0440,uid=1000 \\
    ls -ln /etc/app/token | tr -s ' ' | cut -d' ' -f1,3 && cat /etc/app/token | wc -c
RUN --mount=type=secret,id=token,env=API_TOKEN --mount=type=secret,id=token \
    [ "$API_TOKEN" = "$(cat /run/secrets/token)" ] && echo env ok
"""})


@builds
def test_secret_is_readable_and_absent_from_the_image(store_root, busybox_registry, tmp_path, secret_file):
    context = _secret_context(tmp_path, busybox_registry.reference)
    archive = str(tmp_path / "image.tar")
    result = build(context, store_root, "--secret", f"id=token,src={secret_file}", "-o", f"type=oci,dest={archive}")

    assert output_lines(result.stderr, "id=token cat") == ["-r-------- 0 0"]
    assert output_lines(result.stderr, "target=/etc/app/token") == ["-r--r----- 1000", str(len(SECRET))]
    assert output_lines(result.stderr, "env=API_TOKEN") == ["env ok"]
    # Not in any layer (nor a /run/secrets stub), the config, the history or the manifest.
    assert added_layer_entries(archive) == [["one"], [], []]
    assert not [d for d, data in oci_archive_blobs(archive).items() if SECRET.encode() in data]
    assert SECRET not in result.stderr


@builds
def test_changing_the_secret_value_keeps_the_cache(store_root, busybox_registry, tmp_path, secret_file):
    context = _secret_context(tmp_path, busybox_registry.reference)
    build(context, store_root, "--secret", f"id=token,src={secret_file}")
    other = tmp_path / "other.txt"
    other.write_text("an entirely different value")
    # An unused build-arg makes the build plan anew, so the steps' own cache keys decide.
    again = build(context, store_root, "--secret", f"id=token,src={other}", "--build-arg", "UNUSED=1")
    assert len([s for s in step_lines(again.stderr, "CACHED") if "RUN --mount=type=secret" in s]) == 3


@builds
def test_secret_from_an_environment_variable(store_root, busybox_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "from-the-environment")
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --mount=type=secret,id=tok cat /run/secrets/tok
"""})
    result = build(context, store_root, "--secret", "id=tok,env=MY_TOKEN")
    assert output_lines(result.stderr, "RUN --mount") == ["from-the-environment"]


@builds
def test_missing_secrets_optional_absent_required_fail(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --mount=type=secret,id=optional ls /run/secrets/optional 2>/dev/null || echo absent
RUN --mount=type=secret,id=needed,required=true true
"""})
    result = build(context, store_root, check=False)
    assert result.returncode == 1
    assert output_lines(result.stderr, "id=optional") == ["absent"]
    assert result.stderr.rstrip().splitlines()[-1] == (
        "ERROR: [3/3] RUN --mount=type=secret,id=needed,required=true true: secret needed: not found")


@builds
def test_ssh_agent_socket_is_forwarded(store_root, busybox_registry, tmp_path):
    agent_path = str(tmp_path / "agent.sock")
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        agent.bind(agent_path)
        agent.listen(1)
        context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --mount=type=ssh [ -S "$SSH_AUTH_SOCK" ] && echo "$SSH_AUTH_SOCK"
RUN --mount=type=ssh,id=deploy,target=/tmp/agent.sock,required [ -S /tmp/agent.sock ] && echo deploy
"""})
        archive = str(tmp_path / "image.tar")
        result = build(context, store_root, "--ssh", f"default={agent_path}", "--ssh", f"deploy={agent_path}",
                       "-o", f"type=oci,dest={archive}")
    finally:
        agent.close()
    assert output_lines(result.stderr, "RUN --mount=type=ssh [") == ["/run/buildkit/ssh_agent.0"]
    assert output_lines(result.stderr, "id=deploy") == ["deploy"]
    assert added_layer_entries(archive) == [[], []]  # no /run/buildkit, no /tmp/agent.sock
    assert os.path.exists(agent_path)  # the host's socket is untouched
