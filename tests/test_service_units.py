"""The service's parts without a server: the fair queue, the frames, events and errors as JSON,
rate limits and tokens, the request body reader, and which commands and flags a server runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from builder import events
from builder.errors import BuildError, ExecutionError
from builder.service import protocol
from builder.service.auth import RateLimiter, Tokens, User, basic_credentials
from builder.service.queue import Cancelled, FairQueue
from builder.service.server import Body
from builder.service.worker import check_command


def test_the_queue_serves_users_in_turn_not_in_arrival_order():
    queue = FairQueue(1)
    queue.acquire("holder")
    order, threads = [], []

    def wait(user: str, label: str) -> None:
        queue.acquire(user)
        order.append(label)
        queue.release()

    for user, label in (("alice", "a1"), ("alice", "a2"), ("alice", "a3"), ("bob", "b1")):
        thread = threading.Thread(target=wait, args=(user, label))
        thread.start()
        threads.append(thread)
        while queue.waiting() < len(threads):
            time.sleep(0.01)
    queue.release()
    for thread in threads:
        thread.join(10)
    assert order == ["a1", "b1", "a2", "a3"]   # bob's one build does not wait behind alice's three


def test_a_cancelled_waiter_leaves_the_queue():
    queue = FairQueue(1)
    queue.acquire("holder")
    with pytest.raises(Cancelled):
        queue.acquire("alice", cancelled=lambda: True, poll=0.01)
    assert queue.waiting() == 0
    queue.release()
    queue.acquire("bob")
    assert queue.running == 1


def test_frames_round_trip_and_a_cut_frame_is_an_error():
    data = protocol.message("event", a=1) + protocol.frame(protocol.STDOUT, b"out") + protocol.frame(protocol.FILE, b"")
    reader = protocol.FrameReader(io.BytesIO(data).read)
    assert reader.next() == (protocol.MESSAGE, b'{"type":"event","a":1}')
    assert reader.next() == (protocol.STDOUT, b"out")
    assert reader.next() == (protocol.FILE, b"")
    assert reader.next() is None
    with pytest.raises(protocol.ProtocolError):
        protocol.FrameReader(io.BytesIO(data[:7]).read).next()


def test_events_and_errors_cross_as_json():
    miss = events.CacheMiss("RUN x", "parent step #3 was rebuilt", "sha256:p", "[2/3] RUN y")
    for event in (events.Started("s", "RUN x"), events.Output("s", b"\x00\xffbytes"), events.Log("s", "line"),
                  events.Finished("s", cached=True, error=None),
                  events.Started("s", "RUN x", ("sha256:p", "sha256:q"), miss), events.Finished("s", cache_miss=miss)):
        assert protocol.decode_event(protocol.encode_event(event)) == event
    failed = ExecutionError("/bin/sh -c make", 2, ["make: *** no"], step="[stage-0 2/2] RUN make")
    failed.source = ("Dockerfile:2", ">>> RUN make")
    back = protocol.decode_error(protocol.encode_error(failed))
    assert isinstance(back, ExecutionError) and str(back) == str(failed)
    assert (back.last_lines, back.step, back.source) == (failed.last_lines, failed.step, failed.source)
    plain = protocol.decode_error(protocol.encode_error(BuildError("Dockerfile:1: unknown instruction: X")))
    assert type(plain) is BuildError and str(plain) == "Dockerfile:1: unknown instruction: X"


def test_rate_limits_count_failures_per_key_in_a_window():
    limiter = RateLimiter(limit=2, window=0.2)
    limiter.failed("user:a", "address:1")
    assert not limiter.blocked("user:a", "address:2")
    limiter.failed("user:a", "address:2")
    assert limiter.blocked("user:a", "address:3") and not limiter.blocked("user:b", "address:3")
    time.sleep(0.25)
    assert not limiter.blocked("user:a")


def test_tokens_expire_and_can_be_revoked():
    root = User.by_uid(0)
    tokens = Tokens(lifetime=0.2)
    token, _ = tokens.issue(root)
    assert tokens.user(token) == root and tokens.user(token + "x") is None
    tokens.revoke(token)
    assert tokens.user(token) is None
    short, _ = tokens.issue(root)
    time.sleep(0.25)
    assert tokens.user(short) is None
    assert basic_credentials("Basic dTpwOnc=") == ("u", "p:w") and basic_credentials("Basic !!") is None


def test_tokens_kept_in_a_file_survive_a_restart_hashed_and_0600(tmp_path):
    root = User.by_uid(0)
    path = str(tmp_path / "service" / "tokens.json")
    first = Tokens(lifetime=60, path=path)
    kept, expires = first.issue(root)
    revoked, _ = first.issue(root)
    first.revoke(revoked)
    short = Tokens(lifetime=0.2, path=path)
    brief, _ = short.issue(root)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = open(path).read()
    assert kept not in text and brief not in text and hashlib.sha256(kept.encode()).hexdigest() in text
    time.sleep(0.25)
    restarted = Tokens(lifetime=60, path=path)
    assert restarted.user(kept) == root
    assert restarted.user(revoked) is None and restarted.user(brief) is None and restarted.user("forged") is None
    doc = json.loads(open(path).read())["sha256"]
    assert [entry["expires"] for entry in doc.values()] == [expires]   # the expired one is gone from the file
    with open(path, "w") as f:
        f.write("{not json")
    assert Tokens(path=path).user(kept) is None                        # a damaged file: logged out, no crash


def test_a_chunked_body_is_read_whole_and_a_cut_one_fails():
    chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    body = Body(io.BytesIO(chunked), {"Transfer-Encoding": "chunked"})
    assert body.readline(100) == b"hello world" and body.read(10) == b""
    cut = Body(io.BytesIO(chunked[:12]), {"Transfer-Encoding": "chunked"})
    with pytest.raises(protocol.ProtocolError, match="cut off"):
        while cut.read(4):
            pass


def test_commands_that_would_touch_the_servers_files_are_refused():
    assert check_command("images", ["-q"]) is None
    for name, argv in (("save", ["-o", "/etc/x", "app"]), ("save", ["-o/etc/x", "app"]), ("save", ["--output=x"]),
                       ("load", ["-i", "/etc/shadow"]), ("images", ["--root", "/"]), ("images", ["--root=/"]),
                       ("rmi", ["--", "--root"]), ("fsck", []), ("import", ["/etc/passwd"]), ("export", ["x"])):
        assert check_command(name, argv) is not None, (name, argv)


# Command lines the thin path reads itself, and ones it hands to the local parser.
_THIN = (["ctx"], ["-q", "ctx"], ["--progress", "quiet", "ctx"], ["--progress=plain", "-t", "a:1", "--tag", "b", "ctx"],
         ["--no-cache", "--pull", "-f", "ctx/Other", "--target", "t", "ctx"], ["--network=none", "ctx", "--quiet"],
         ["--build-arg", "A=1", "--build-arg=B=2=3", "--build-arg", "FROM_ENV", "--build-arg", "UNSET_HERE", "ctx"],
         ["--label", "k=v", "--label=bare", "--iidfile", "id.txt", "--platform", "linux/arm64", "ctx"],
         ["-f", "-", "ctx"], ["-"])
_LOCAL = (["--help"], ["-h"], ["-tname", "ctx"], ["-t=name", "ctx"], ["--no-cache=false", "ctx"], ["ctx", "other"], [],
          ["-t"], ["-t", "--no-cache", "ctx"], ["--tag=", "ctx"], ["--", "ctx"], ["--progress", "fancy", "ctx"],
          ["-o", "out", "ctx"], ["--secret", "id=a,src=f", "ctx"], ["--ssh", "default", "ctx"], ["--root", "r", "ctx"],
          ["--label", "=v", "ctx"], ["--frobnicate", "ctx"], ["--build-context", "x=y", "ctx"], ["-qt", "a", "ctx"])


def test_the_thin_path_makes_the_request_the_local_parser_makes(monkeypatch):
    from builder.cli import build_command, remote

    monkeypatch.setenv("FROM_ENV", "from the environment")
    monkeypatch.delenv("UNSET_HERE", raising=False)
    monkeypatch.delenv("BUILDKIT_PROGRESS", raising=False)
    assert remote.PROGRESS_MODES == build_command.PROGRESS_MODES
    for argv in _THIN:
        thin = remote._thin_options(argv)
        assert thin is not None, argv
        ns = build_command._build_parser().parse_args(argv)
        full = build_command._options(ns)
        assert remote._request(thin) == remote._request(full), argv
        for name in ("context", "dockerfile", "iidfile", "metadata_file", "outputs", "ssh", "secrets"):
            assert getattr(thin, name) == getattr(full, name), (argv, name)
        assert (thin.progress, thin.quiet) == (ns.progress, ns.quiet), argv
    for argv in _LOCAL:
        assert remote._thin_options(argv) is None, argv
    monkeypatch.setenv("BUILDKIT_PROGRESS", "bogus")   # the local parser says what is wrong with it
    assert remote._thin_options(["ctx"]) is None


def test_the_other_flags_make_the_request_build_commands_options_make(tmp_path, monkeypatch):
    """The whole parser's command lines, through _options_from (no pipeline import) and through
    build_command._options (BuildOptions): the same request, the same dests, the same errors."""
    from builder.cli import build_command, remote

    secret = tmp_path / "token"
    secret.write_text("s3cret")
    listeners = []
    for name in ("agent.sock", "other.sock"):   # the parser checks that they are sockets
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / name))
        listeners.append(listener)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    argvs = (["-o", "out.tar", "ctx"], ["-o", "-", "ctx"], ["-o", "type=oci,dest=o.tar,name=x", "-o", "type=local,dest=d", "ctx"],
             ["-o", "type=image,push=true", "-t", "r/x", "--push", "ctx"], ["--secret", f"id=a,src={secret}", "ctx"],
             ["--ssh", "default", "--ssh", f"other={tmp_path / 'other.sock'}", "ctx"], ["--build-context", "x=docker-image://busybox", "ctx"],
             ["--no-cache-filter", "a,b", "--no-cache-filter", "c", "--allow", "network.host,security.insecure", "ctx"],
             ["--add-host", "h:1.2.3.4", "--shm-size", "128m", "--ulimit", "nofile=1:2", "-m", "64m", "--pids-limit", "9",
              "--cpu-shares", "512", "--jobs", "3", "--annotation", "k=v", "--insecure-registry", "r:5000", "ctx"],
             ["--metadata-file", "m.json", "--label", "a=b", "--label=c", "ctx"], ["-o", "type=oci,nodest", "ctx"])
    for argv in argvs:
        ns = build_command._build_parser().parse_args(argv)
        ours = remote._options_from(ns)
        if argv[-2] == "type=oci,nodest":   # malformed: the server's OutputSpec.parse words the error
            assert remote._request(ours)[0]["outputs"] == ["type=oci,nodest"]
            continue
        theirs = build_command._options(ns)
        assert remote._request(ours) == remote._request(theirs), argv
        assert [o.get("dest") for o in ours.outputs] == [o.get("dest") for o in theirs.outputs], argv
    for argv, message in ((["--push", "ctx"], "tag is needed when pushing"), (["-o", "-", "-o", "type=tar,dest=-", "ctx"],
                          "only one output can write to stdout"), (["--label", "=v", "ctx"], "the key is empty")):
        ns = build_command._build_parser().parse_args(argv)
        with pytest.raises(BuildError, match=message) as ours:
            remote._options_from(ns)
        with pytest.raises(BuildError) as theirs:
            build_command._options(ns)
        assert str(ours.value) == str(theirs.value)
    for listener in listeners:
        listener.close()


@pytest.mark.parametrize("flags", [["--cache-to", "type=local,dest=c"], ["--cache-from", "type=local,src=c"],
                                   ["--timeline", "t.html"], ["--trace", "t.json"], ["--cgroup-parent", "p"]])
def test_flags_not_forwarded_to_the_server_are_refused_not_dropped(tmp_path, flags):
    """Refused on the client, before it connects (there is no server at that address)."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    done = subprocess.run([sys.executable, "-m", "builder.cli", "--server", f"unix://{tmp_path}/none.sock", "build",
                           *flags, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 125   # a usage error, as docker's
    assert f"{flags[0]} is not supported with --server yet" in done.stderr
