"""Flag syntax in builder.grammar: --chmod, --chown, --checksum, ADD URL names, --mount defaults."""

import pytest

from builder.grammar.flags import FlagSyntaxError, ModeSpec, chown_names, parse_checksum, parse_user_id, url_filename
from builder.grammar.runmount import parse_mount, secret_defaults, ssh_defaults


@pytest.mark.parametrize("text, mode, is_dir, expected", [
    ("755", 0o600, False, 0o755),
    ("u+x", 0o644, False, 0o744),
    ("go-w", 0o777, True, 0o755),
    ("a=rX", 0o700, True, 0o555),
    ("a=rX", 0o600, False, 0o444),
])
def test_chmod_octal_and_symbolic(text, mode, is_dir, expected):
    assert ModeSpec.parse(text).apply(mode, is_dir) == expected


@pytest.mark.parametrize("text", ["", "8", "17777", "u+q", "9x"])
def test_chmod_rejects_what_buildkit_rejects(text):
    with pytest.raises(FlagSyntaxError, match="invalid chmod parameter"):
        ModeSpec.parse(text)


def test_chown_ids_and_names():
    assert parse_user_id("root") == 0 and parse_user_id("1000") == 1000 and parse_user_id("app") is None
    assert chown_names("app:staff") == ["app", "staff"]
    assert chown_names("1000:50") == []


def test_checksum_takes_only_a_sha256_digest():
    digest = "sha256:" + "ab" * 32
    assert parse_checksum(digest) == digest
    with pytest.raises(FlagSyntaxError, match="unsupported digest algorithm"):
        parse_checksum("md5:" + "ab" * 16)
    with pytest.raises(FlagSyntaxError, match="invalid checksum digest format"):
        parse_checksum("sha256:ABC")


def test_url_filename():
    assert url_filename("https://example.test/dl/tool%20v1.tgz?x=1") == "tool v1.tgz"
    assert url_filename("https://example.test/") == "__unnamed__"


def test_secret_and_ssh_defaults_are_buildkits():
    secret = secret_defaults(parse_mount("type=secret,id=token"))
    assert (secret.id, secret.target, secret.mode, secret.uid) == ("token", "/run/secrets/token", 0o400, 0)
    env_only = secret_defaults(parse_mount("type=secret,id=token,env=TOKEN"))
    assert (env_only.target, env_only.env) == ("", "TOKEN")
    ssh = ssh_defaults(parse_mount("type=ssh"), 1)
    assert (ssh.id, ssh.target, ssh.mode) == ("default", "/run/buildkit/ssh_agent.1", 0o600)
