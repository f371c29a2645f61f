"""Image reference parsing follows Docker's normalisation (distribution/reference)."""

from __future__ import annotations

import pytest

from builder.errors import BuildError
from builder.registry import InvalidReference, Reference, parse_reference

D = "sha256:" + "ab" * 32

# input -> (registry, repository, tag, digest, str(), familiar)
NORMALISED = [
    ("busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None,
     "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("moby/buildkit:v0.12", "docker.io", "moby/buildkit", "v0.12", None,
     "docker.io/moby/buildkit:v0.12", "moby/buildkit:v0.12"),
    ("docker.io/library/a/b", "docker.io", "library/a/b", "latest", None,
     "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/a", "localhost:5000", "a", "latest", None,
     "localhost:5000/a:latest", "localhost:5000/a:latest"),
    ("127.0.0.1:5000/x/y:t", "127.0.0.1:5000", "x/y", "t", None,
     "127.0.0.1:5000/x/y:t", "127.0.0.1:5000/x/y:t"),
    ("ghcr.io/o/r", "ghcr.io", "o/r", "latest", None, "ghcr.io/o/r:latest", "ghcr.io/o/r:latest"),
    ("Registry.Example/r", "Registry.Example", "r", "latest", None,
     "Registry.Example/r:latest", "Registry.Example/r:latest"),
    ("[::1]:5000/img:v1", "[::1]:5000", "img", "v1", None, "[::1]:5000/img:v1", "[::1]:5000/img:v1"),
    (f"a/b@{D}", "docker.io", "a/b", None, D, f"docker.io/a/b@{D}", f"a/b@{D}"),
    (f"busybox:1@{D}", "docker.io", "library/busybox", "1", D,
     f"docker.io/library/busybox:1@{D}", f"busybox:1@{D}"),
    (f"localhost:5000/a:t@{D}", "localhost:5000", "a", "t", D,
     f"localhost:5000/a:t@{D}", f"localhost:5000/a:t@{D}"),
    ("a__b/c-d/e.f_g---h:Tag_1.0-rc", "docker.io", "a__b/c-d/e.f_g---h", "Tag_1.0-rc", None,
     "docker.io/a__b/c-d/e.f_g---h:Tag_1.0-rc", "a__b/c-d/e.f_g---h:Tag_1.0-rc"),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None,  # docker reads this as a tag
     "docker.io/library/localhost:5000", "localhost:5000"),
]


@pytest.mark.parametrize("name, registry, repository, tag, digest, full, familiar", NORMALISED,
                         ids=[case[0] for case in NORMALISED])
def test_reference_normalisation(name, registry, repository, tag, digest, full, familiar):
    ref = parse_reference(name)
    assert ref == Reference(registry, repository, tag, digest)
    assert str(ref) == full
    assert ref.familiar == familiar
    assert parse_reference(str(ref)) == ref  # the fully qualified form parses to itself


INVALID = [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("docker.io/Library/busybox", "lowercase"),
    ("busybox:", "bad tag"),
    ("busybox:-tag", "bad tag"),
    ("busybox:" + "t" * 129, "bad tag"),
    ("busybox@sha256:abc", "sha256"),
    ("busybox@sha256:" + "AB" * 32, "sha256"),
    ("busybox@" + "ab" * 32, "bad digest"),
    ("a//b", "not a valid repository"),
    ("a/b/", "not a valid repository"),
    ("-a/b", "not a valid repository"),
    ("a..b", "not a valid repository"),
    ("ab" * 32, "hexadecimal"),
    ("bad_host:5000:1/a", "bad registry host"),
    ("registry.example/" + "a" * 260, "longer than"),
    (" busybox", "whitespace"),
    ("-host.io/a", "bad registry host"),
]


@pytest.mark.parametrize("name, reason", INVALID, ids=[case[0][:40] or "empty" for case in INVALID])
def test_invalid_reference_is_rejected_with_reason(name, reason):
    with pytest.raises(InvalidReference) as info:
        parse_reference(name)
    assert isinstance(info.value, BuildError)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_with_digest_pins_and_keeps_tag():
    ref = parse_reference("busybox:1.36")
    pinned = ref.with_digest(D)
    assert pinned.digest == D and pinned.tag == "1.36"
    assert str(pinned) == f"docker.io/library/busybox:1.36@{D}"
    assert ref.digest is None  # frozen: the original is untouched
    with pytest.raises(InvalidReference):
        ref.with_digest("sha256:short")


def test_reference_name_has_no_tag_or_digest():
    assert parse_reference(f"localhost:5000/a/b:t@{D}").name == "localhost:5000/a/b"
