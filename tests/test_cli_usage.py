"""Usage errors and failures as docker reports them: every command, given bad arguments, prints one
`ERROR:` line (usage errors add a `See '... --help'.` pointer) and no traceback; usage errors exit
125, failed commands 1; a closed stdout is no error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from builder.cli import _COMMANDS, _GROUPS
from tests.support.images import write_context


def run(*args: str, root: str, stdin: bytes = b"", cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder.cli", *args, "--root", root], input=stdin,
                          capture_output=True, timeout=120, cwd=cwd)


def assert_one_error(proc: subprocess.CompletedProcess, code: int, *, mentions: str = "") -> str:
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, err
    assert mentions in errors[0], err
    return errors[0]


EVERY_COMMAND = sorted(set(_COMMANDS) - {"completion"}) + [f"{group} {sub}" for group, subs in _GROUPS.items()
                                                           for sub in subs if sub != "version"] \
    + ["login-server", "logout-server"]


@pytest.mark.parametrize("command", EVERY_COMMAND)
def test_an_unknown_flag_is_one_error_line_exit_125(command, store_root):
    proc = run(*command.split(), "--frobnicate", "value", "ctx", root=store_root)
    line = assert_one_error(proc, 125, mentions="unknown flag: --frobnicate")
    assert line == "ERROR: unknown flag: --frobnicate"
    assert proc.stderr.decode().splitlines()[-1].endswith("--help'.")


# Bad values the commands themselves reject: each a command line and what its error names.
BAD_VALUES = [
    (["images", "--filter", "bogus=1"], 1, "bogus"),
    (["tag", "missing:1", "other:1"], 1, "missing"),
    (["rmi", "missing:1"], 1, "missing"),
    (["inspect", "missing:1"], 1, "missing"),
    (["history", "missing:1"], 1, "missing"),
    (["save", "missing:1", "-o", "out.tar"], 1, "missing"),
    (["load", "-i", "missing.tar"], 1, "missing.tar"),
    (["import", "missing.tar"], 1, "missing.tar"),
    (["export", "-o", "out.tar", "missing:1"], 1, "missing"),
    (["pull", "-a", "::bad::"], 1, ""),
    (["push", "missing:1"], 1, "missing"),
    (["login", "--password-stdin"], 1, "--username"),
    (["logout", "a", "b"], 125, ""),
    (["prune", "--filter", "bogus=1", "-f"], 1, "bogus"),
    (["df", "extra"], 125, "extra"),
    (["fsck", "extra"], 125, "extra"),
    (["parse", "-f", "missing/Dockerfile"], 1, "missing/Dockerfile"),
    (["completion", "zsh"], 125, "zsh"),
    (["version", "extra"], 125, "extra"),
    (["image"], 125, "build-image image"),
    (["system", "frob"], 125, "frob"),
    (["build"], 125, "CONTEXT"),
    (["build", "--progress", "sideways", "ctx"], 125, "sideways"),
    (["build", "--isolation", "hyperv", "ctx"], 125, "hyperv"),
    (["build", "--cache-from", "type=s3,bucket=x", "ctx"], 125, "type=s3 is not supported"),
    (["build", "--cache-to", "type=local", "ctx"], 125, "needs dest="),
    (["build", "--sbom", "true", "ctx"], 125, "attestations"),
    (["build", "--build-context", "a=b", "ctx"], 1, "not a directory"),
    (["build", "--cpu-quota", "1000", "ctx"], 125, "--cpu-quota"),
    (["build", "--no-cache=maybe", "ctx"], 125, "ParseBool"),
    (["build", "missing-context"], 1, "missing-context"),
    (["build", "-o", "type=docker", "ctx"], 1, "needs dest"),
    (["build", "-o", "type=oci,dest=x.tar,frob=1", "ctx"], 1, "frob"),
    (["build", "--push", "ctx"], 1, "tag is needed"),
    (["build", "--ulimit", "nofile", "ctx"], 1, "ulimit"),
    (["build", "--ulimit", "nofile=10:5", "ctx"], 1, "soft limit"),
    (["build", "--ulimit", "frob=1", "ctx"], 1, "frob"),
    (["build", "--shm-size", "lots", "ctx"], 1, "shm-size"),
    (["build", "--label", "=x", "ctx"], 1, "label"),
    (["build", "--annotation", "index:a=b", "ctx"], 1, "index annotations"),
    (["build", "--platform", "bogus", "ctx"], 1, "bogus"),
    (["build", "--squash", "ctx"], 125, "--squash"),
    (["build", "-f", "-", "-"], 1, "stdin"),
    (["build", "-o", "type=local,dest=-", "ctx"], 1, "stdout"),
    (["build", "-o", "type=oci,dest=x,compression=lz4", "ctx"], 1, "compression"),
    (["build", "-o", "type=oci,dest=x,compression-level=99", "ctx"], 1, "compression-level"),
    (["build", "-o", "-", "-o", "type=oci,dest=-", "ctx"], 1, "only one output"),
]


@pytest.mark.parametrize("args, code, mentions", BAD_VALUES, ids=[" ".join(a) for a, _, _ in BAD_VALUES])
def test_bad_values_are_one_error_line(args, code, mentions, store_root, tmp_path):
    write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY a /\n", "a": "a\n"})
    proc = run(*args, root=store_root, cwd=tmp_path)
    assert_one_error(proc, code, mentions=mentions)


def test_refused_flag_value_is_not_taken_for_the_context(store_root, tmp_path):
    proc = run("--sbom", "true", str(tmp_path), root=store_root)
    line = assert_one_error(proc, 125, mentions="--sbom")
    assert str(tmp_path) not in line and "true" not in line


def test_iidfile_in_a_missing_directory_fails_before_any_name_moves(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY a /\n", "a": "a\n"})
    proc = run("-t", "app:1", "--iidfile", str(tmp_path / "missing" / "iid"), context, root=store_root)
    assert_one_error(proc, 1, mentions="image ID file")
    assert b"app" not in run("images", "--format", "{{.Repository}}:{{.Tag}}", root=store_root).stdout
    ok = run("-t", "app:1", "--iidfile", str(tmp_path / "iid"), "-q", context, root=store_root)
    assert ok.returncode == 0 and (tmp_path / "iid").read_text() == ok.stdout.decode().strip()


@pytest.mark.parametrize("args", [["--help"], ["build", "--help"], ["images", "--help"], ["completion", "bash"],
                                  ["version"]])
def test_a_closed_stdout_is_no_error(args, store_root):
    # The reader closes the pipe before anything is written: every write then fails with EPIPE.
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "builder.cli", *args], stdout=write,
                              stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()


def test_python_m_builder_and_version(store_root):
    for argv in (["-m", "builder", "--version"], ["-m", "builder", "version"], ["-m", "builder.cli", "--version"]):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("build-image version "), proc


def test_bash_completion_names_commands_and_build_flags():
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "completion", "bash"], capture_output=True,
                          text=True, timeout=60)
    script = proc.stdout
    assert proc.returncode == 0 and "complete -o filenames -o bashdefault -F _build_image build-image" in script
    for word in ("images", "image", "system", "--no-cache-filter", "--metadata-file", "--ulimit"):
        assert f" {word} " in script or f" {word}\"" in script, word
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


def test_docker_command_forms_reach_the_same_commands(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY a /\n", "a": "a\n"})
    image_id = run("-q", "-t", "app:1", context, root=store_root).stdout.decode().strip()
    assert run("image", "ls", "-q", "--no-trunc", root=store_root).stdout.decode().split() == [image_id]
    assert run("image", "tag", "app:1", "app:2", root=store_root).returncode == 0
    [config] = json.loads(run("image", "inspect", "app:2", root=store_root).stdout)
    assert config["Id"] == image_id
    assert run("image", "rm", "app:2", root=store_root).returncode == 0
    assert b"app:2" not in run("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", root=store_root).stdout
    assert run("image", "history", "-q", "app:1", root=store_root).returncode == 0
    assert run("image", "save", "-o", str(tmp_path / "app.tar"), "app:1", root=store_root).returncode == 0
    loaded = run("image", "load", "-i", str(tmp_path / "app.tar"), root=store_root)
    assert loaded.stdout.decode() == "Loaded image: app:1\n"
    quiet = run("load", "-q", "-i", str(tmp_path / "app.tar"), root=store_root)
    assert quiet.stdout.decode() == "Loaded image: app:1\n"  # docker's -q silences progress, not this
    assert run("system", "df", root=store_root).stdout.decode().startswith("TYPE")
    assert run("system", "prune", "-f", root=store_root).returncode == 0


def test_an_archive_on_a_closed_stdout_is_an_error(store_root, tmp_path):
    # Unlike `--help | head`, a truncated archive is a failure the pipeline must see.
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY a /\n", "a": "a\n"})
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "builder.cli", "--root", store_root, "-o", "-", context],
                              stdout=write, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write)
    assert_one_error(proc, 1, mentions="standard output was closed")


def test_a_build_ends_without_teardown_only_after_exit_work_has_run(tmp_path):
    """builder.cli._end_without_teardown runs the atexit callbacks (here one registered by the
    build's own code) before it ends the process, and the standard streams are flushed."""
    script = (
        "import atexit, sys\n"
        "from builder import cli\n"
        f"atexit.register(lambda: open({str(tmp_path / 'ran')!r}, 'w').write('yes'))\n"
        "sys.stdout.write('unflushed output')\n"
        "cli._end_without_teardown(3)\n"
        "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and done.stdout == "unflushed output"
    assert (tmp_path / "ran").read_text() == "yes"
