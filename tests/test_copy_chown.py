"""COPY/ADD --chown and --chmod: names resolved in the destination image, ids, the `user:` forms,
octal and symbolic modes, and the directories created for the destination."""

from __future__ import annotations

import os

import pytest

from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


def build_rootfs(tmp_path, store_root, dockerfile: str, files: dict[str, str]) -> str:
    context = write_context(tmp_path / "ctx", {"Dockerfile": dockerfile, **files})
    out = str(tmp_path / "out")
    build_image("--root", store_root, context, "-o", f"type=local,dest={out}")
    return out


def ids(root: str, path: str) -> tuple[int, int]:
    st = os.lstat(os.path.join(root, path.lstrip("/")))
    return st.st_uid, st.st_gid


def mode(root: str, path: str) -> int:
    return os.lstat(os.path.join(root, path.lstrip("/"))).st_mode & 0o7777


def test_chown_names_come_from_the_destination_image(tmp_path, store_root, busybox_registry):
    out = build_rootfs(tmp_path, store_root, f"""\
FROM {busybox_registry.reference}
RUN echo 'svc:x:1500:1600::/home/svc:/bin/sh' >> /etc/passwd && echo 'svc:x:1600:' >> /etc/group \\
 && echo 'staff2:x:1700:' >> /etc/group
COPY --chown=svc foo /by-name
COPY --chown=svc:staff2 foo /name-and-group
COPY --chown=1000 foo /uid-only
COPY --chown=1000: foo /uid-empty-group
COPY --chown=root:1700 dir /dir-created/sub/
""", {"foo": "x", "dir/inner": "y"})
    assert ids(out, "by-name") == (1500, 1600)                  # a name alone takes its primary group
    assert ids(out, "name-and-group") == (1500, 1700)
    assert ids(out, "uid-only") == (1000, 1000)                 # an id alone is also the gid
    assert ids(out, "uid-empty-group") == (1000, 0)             # "uid:" means gid 0, as BuildKit
    assert ids(out, "dir-created") == ids(out, "dir-created/sub") == (0, 1700)  # created dirs get it too
    assert ids(out, "dir-created/sub/inner") == (0, 1700)


def test_unknown_chown_name_fails_the_step(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\n"
                                                             "COPY --chown=nobody-here foo /\n", "foo": "x"})
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1
    assert "unable to find user nobody-here: no matching entries in passwd file" in proc.stderr


def test_chmod_octal_and_symbolic(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
COPY --chmod=0644 exe /octal
COPY --chmod=777 exe /parent/foo
COPY --chmod=770 exe /parent/sub/foo
COPY --chmod=0 exe /zero
COPY --chmod=4755 exe /setuid
COPY --chmod=go-w exe /go-w
COPY --chmod=u=rw,g=r,o=r exe /assigned
COPY --chmod=a+X plain /plain-X
COPY --chmod=a+X dir /dir-X/
""", "exe": "#!/bin/sh\n", "plain": "p", "dir/file": "f"})
    os.chmod(f"{context}/exe", 0o777)
    os.chmod(f"{context}/plain", 0o640)
    os.chmod(f"{context}/dir/file", 0o600)
    os.chmod(f"{context}/dir", 0o700)
    out = str(tmp_path / "out")
    build_image("--root", store_root, context, "-o", f"type=local,dest={out}")
    assert mode(out, "octal") == 0o644
    assert mode(out, "parent") == 0o777 and mode(out, "parent/sub") == 0o770  # dirs made for the dest
    assert mode(out, "zero") == 0
    assert mode(out, "setuid") == 0o4755
    assert mode(out, "go-w") == 0o755
    assert mode(out, "assigned") == 0o644
    assert mode(out, "plain-X") == 0o640                         # X: only where some x bit is set
    assert mode(out, "dir-X/file") == 0o600
    assert mode(out, "dir-X") == 0o755                           # created dest dir: 0755 for a symbolic mode


@pytest.mark.parametrize("value", ["64a", "10000"])
def test_invalid_chmod_is_a_dockerfile_error(tmp_path, store_root, value):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM scratch\n\nCOPY --chmod={value} foo /\n",
                                               "foo": "x"})
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ERROR: Dockerfile:3: invalid chmod parameter: '{value}'. it should be octal string and between 0 and 07777")
