"""docker build's standard-input context forms (`-` with a tar or a Dockerfile, `-f -`) and errors
that must come before any step: an invalid stage index, a missing secret file."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import subprocess
import sys
import os
import tarfile

import pytest

from tests.support.images import write_context


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder.cli", *args], input=stdin, capture_output=True,
                          timeout=300)


def context_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


FILES = {"Dockerfile": b"FROM scratch\nCOPY a /\n", "a": b"a\n", "sub/Dockerfile.alt": b"FROM scratch\nCOPY a /alt\n"}


def image_id(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().strip()


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress, bz2.compress, lzma.compress],
                         ids=["plain", "gzip", "bzip2", "xz"])
def test_a_tar_on_stdin_is_the_context(compress, store_root, tmp_path):
    from_dir = image_id(cli("--root", store_root, "-q", write_context(tmp_path / "ctx", {
        "Dockerfile": "FROM scratch\nCOPY a /\n", "a": "a\n"})))
    assert image_id(cli("--root", store_root, "-q", "-", stdin=compress(context_tar(FILES)))) == from_dir


def test_f_names_a_dockerfile_inside_the_stdin_tar(store_root, tmp_path):
    out = tmp_path / "out"
    image_id(cli("--root", store_root, "-q", "-f", "sub/Dockerfile.alt", "-o", f"type=local,dest={out}", "-",
                 stdin=context_tar(FILES)))
    assert (out / "alt").read_text() == "a\n"


def test_a_dockerfile_on_stdin_has_no_context(store_root, tmp_path):
    assert image_id(cli("--root", store_root, "-q", "-", stdin=b"FROM scratch\nLABEL only=dockerfile\n"))
    proc = cli("--root", store_root, "-", stdin=b"FROM scratch\nCOPY a /\n")
    assert proc.returncode == 1 and b'"/a": not found' in proc.stderr and b"Traceback" not in proc.stderr


def test_f_dash_reads_the_dockerfile_from_stdin_with_a_directory_context(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY missing /\n", "a": "a\n"})
    out = tmp_path / "out"
    image_id(cli("--root", store_root, "-q", "-f", "-", "-o", f"type=local,dest={out}", context,
                 stdin=b"FROM scratch\nCOPY a /from-stdin\n"))
    assert (out / "from-stdin").read_text() == "a\n"


def test_stdin_cannot_be_both(store_root):
    proc = cli("--root", store_root, "-f", "-", "-", stdin=b"FROM scratch\n")
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == "ERROR: invalid argument: can't use stdin for both build context and dockerfile"


def test_a_compressed_non_tar_is_an_error(store_root):
    proc = cli("--root", store_root, "-", stdin=gzip.compress(b"FROM scratch\n"))
    assert proc.returncode == 1 and b"not a tar archive" in proc.stderr and b"Traceback" not in proc.stderr


def test_copy_from_a_stage_index_that_does_not_exist(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY --from=3 /a /\n"})
    proc = cli("--root", store_root, context)
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines()[-1] == "ERROR: Dockerfile:2: invalid stage index 3"


def test_a_missing_secret_file_fails_before_any_step_even_when_cached(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY a /\n", "a": "a\n"})
    assert cli("--root", store_root, context).returncode == 0
    proc = cli("--root", store_root, "--progress", "plain", "--secret", f"id=x,src={tmp_path / 'missing'}", context)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.startswith("ERROR: failed to stat ") and "#1" not in err, err


def test_a_bad_base_name_names_the_dockerfile_line(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "# base\nFROM Bad::Name\n"})
    proc = cli("--root", store_root, context)
    last = proc.stderr.decode().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("ERROR: Dockerfile:2: invalid reference format"), last


def test_a_missing_copy_source_shows_its_step_block_and_dockerfile_lines(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY a /\nCOPY missing /\nCOPY a /b\n",
                                               "a": "a\n"})
    err = cli("--root", store_root, "--progress", "plain", context).stderr.decode()
    lines = err.splitlines()
    step = "[3/4] COPY missing /"
    number = next(line.split()[0] for line in lines if line.endswith(step))
    assert f"{number} ERROR: " in err and "Traceback" not in err
    excerpt = lines[lines.index("Dockerfile:3"):]
    assert excerpt[:6] == ["Dockerfile:3", "-" * 20, "   1 |     FROM scratch", "   2 |     COPY a /",
                           "   3 | >>> COPY missing /", "   4 |     COPY a /b"]
    assert lines[lines.index("Dockerfile:3") - 2] == f" > {step}:"
    assert lines[-1] == f'ERROR: {step}: failed to compute cache key: "/missing": not found'


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_a_failed_run_shows_its_dockerfile_lines(store_root, tmp_path, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\n"
                                                             "RUN echo one && \\\n    exit 3\n"})
    err = cli("--root", store_root, "--progress", "plain", context).stderr.decode()
    lines = err.splitlines()
    excerpt = lines[lines.index("Dockerfile:2-3"):]
    assert excerpt[3:5] == ["   2 | >>> RUN echo one && \\", "   3 | >>>     exit 3"]
    assert lines[-1].startswith("ERROR: failed to solve: process ") and lines[-1].endswith("exit code: 3")


# --- contexts named by URL ------------------------------------------------------------------------


def _git(*args: str, cwd) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.fixture
def bare_repo(tmp_path):
    """A bare git repository: main has a Dockerfile and `sub/` (its own Dockerfile); tag v1 is the
    first commit, main has moved on since."""
    work = tmp_path / "work"
    write_context(work, {"Dockerfile": "FROM scratch\nCOPY a /\n", "a": "v1\n",
                         "sub/Dockerfile": "FROM scratch\nCOPY x /\n", "sub/x": "x\n"})
    _git("init", "-q", "-b", "main", cwd=work)
    _git("add", "-A", cwd=work)
    _git("commit", "-qm", "one", cwd=work)
    _git("tag", "v1", cwd=work)
    (work / "a").write_text("v2\n")
    _git("commit", "-qam", "two", cwd=work)
    bare = tmp_path / "bare.git"
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    return bare


def test_a_git_url_is_the_context_at_a_ref_and_subdir(store_root, tmp_path, bare_repo):
    url = f"file://{bare_repo}"
    out = tmp_path / "out"
    image_id(cli("--root", store_root, "-q", "-o", f"type=local,dest={out}", url))
    assert (out / "a").read_text() == "v2\n"
    tagged = tmp_path / "tagged"
    image_id(cli("--root", store_root, "-q", "-o", f"type=local,dest={tagged}", f"{url}#v1"))
    assert (tagged / "a").read_text() == "v1\n"
    sub = tmp_path / "sub"
    image_id(cli("--root", store_root, "-q", "-o", f"type=local,dest={sub}", f"{url}#main:sub"))
    assert os.listdir(sub) == ["x"]


def test_the_git_dir_is_kept_only_when_asked(store_root, tmp_path, bare_repo):
    dockerfile = b"FROM scratch\nCOPY .git/HEAD /\n"
    gone = cli("--root", store_root, "-f", "-", f"file://{bare_repo}", stdin=dockerfile)
    assert gone.returncode == 1 and b'"/.git/HEAD": not found' in gone.stderr
    kept = cli("--root", store_root, "-q", "--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1", "-f", "-",
               f"file://{bare_repo}", stdin=dockerfile)
    assert kept.returncode == 0 and b"not consumed" not in kept.stderr, kept.stderr


def test_git_url_errors(store_root, bare_repo):
    for url, message in ((f"file://{bare_repo}#nope", b"couldn't find remote ref nope"),
                         (f"file://{bare_repo}#main:missing", b"'missing' is not a directory"),
                         (f"file://{bare_repo}.missing", b"failed to fetch")):
        proc = cli("--root", store_root, url)
        assert proc.returncode == 1 and message in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr


def test_an_http_url_is_a_tarball_or_a_dockerfile(store_root, tmp_path):
    from http.server import BaseHTTPRequestHandler

    from tests.support.httpserver import LoopbackHTTPServer

    bodies = {"/ctx.tar.gz": gzip.compress(context_tar(FILES)), "/Dockerfile": b"FROM scratch\nLABEL from=url\n"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = bodies.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    from_dir = image_id(cli("--root", store_root, "-q", write_context(tmp_path / "ctx", {
        "Dockerfile": "FROM scratch\nCOPY a /\n", "a": "a\n"})))
    with LoopbackHTTPServer(Handler) as server:
        assert image_id(cli("--root", store_root, "-q", f"{server.url}/ctx.tar.gz")) == from_dir
        assert image_id(cli("--root", store_root, "-q", "-t", "fromurl:1", f"{server.url}/Dockerfile"))
        missing = cli("--root", store_root, f"{server.url}/missing")
    assert missing.returncode == 1 and b"404" in missing.stderr and b"Traceback" not in missing.stderr
    labels = subprocess.run([sys.executable, "-m", "builder.cli", "inspect", "--root", store_root, "-f",
                             "{{json .Config.Labels}}", "fromurl:1"], capture_output=True, text=True).stdout
    assert labels.strip() == '{"from":"url"}'


def test_a_build_context_may_be_a_git_url(store_root, tmp_path, bare_repo):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY --from=repo /x /from-git\n"})
    out = tmp_path / "out"
    image_id(cli("--root", store_root, "-q", "--build-context", f"repo=file://{bare_repo}#main:sub",
                 "-o", f"type=local,dest={out}", context))
    assert (out / "from-git").read_text() == "x\n"


@pytest.mark.parametrize("server", ["git-daemon", "http-backend"])
def test_a_git_url_served_on_loopback_is_fetched_at_its_ref(store_root, tmp_path, bare_repo, server):
    from tests.support.gitserver import GitDaemon, GitHTTPBackend

    serving = GitDaemon(bare_repo.parent) if server == "git-daemon" else GitHTTPBackend(bare_repo.parent)
    with serving:
        url = f"{serving.url}/{bare_repo.name}"
        tip, tagged, sub = tmp_path / "tip", tmp_path / "tagged", tmp_path / "sub"
        image_id(cli("--root", store_root, "-q", "-o", f"type=local,dest={tip}", url))
        image_id(cli("--root", store_root, "-q", "-o", f"type=local,dest={tagged}", f"{url}#v1"))
        image_id(cli("--root", store_root, "-q", "-o", f"type=local,dest={sub}", f"{url}#main:sub"))
        context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY --from=repo /x /from-git\n"})
        named = tmp_path / "named"
        image_id(cli("--root", store_root, "-q", "--build-context", f"repo={url}#v1:sub",
                     "-o", f"type=local,dest={named}", context))
        missing = cli("--root", store_root, f"{url}#nope")
    assert (tip / "a").read_text() == "v2\n" and (tagged / "a").read_text() == "v1\n"
    assert os.listdir(sub) == ["x"] and (named / "from-git").read_text() == "x\n"
    assert missing.returncode == 1 and b"failed to fetch" in missing.stderr and b"Traceback" not in missing.stderr
