"""Real users through `build-image serve`: kept apart over the unix socket (SO_PEERCRED), and
authenticated over TLS TCP by real PAM (pam_unix, users made with useradd and chpasswd), with
tokens, rate limits, and every endpoint of the server's own routing table closed to strangers."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
import time

import pytest

from builder.service.server import METHODS, ROUTES
from tests.support.buildserver import SYSTEM_PYTHON, BuildServer, Certificates, PamService, local_users
from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


@pytest.fixture
def users():
    with local_users(2) as made:
        yield made


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return Certificates.make(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def tls_server(store_root, certificates):
    with PamService() as pam, BuildServer(store_root, tls=certificates, pam_service=pam.name) as server:
        yield server


@pytest.fixture
def user_ca(tls_server, certificates):
    """The CA certificate where the test users can read it."""
    return shutil.copy(certificates.ca, tls_server.dir)


def _context(server, name, dockerfile, files=None):
    return write_context(server.workdir(name), {"Dockerfile": dockerfile, **(files or {})})


def test_two_users_build_at_once_and_neither_reaches_the_others_images_logs_or_secrets(
        store_root, users, busybox_registry):
    alice, bob = users
    base = busybox_registry.reference
    with BuildServer(store_root) as server:
        secrets = {}
        builds = {}
        for user in users:
            secrets[user.name] = f"secret-of-{user.name}"
            path = os.path.join(server.workdir(user.name), "token")
            context = _context(server, user.name, (
                f"FROM {base}\n"
                f"RUN --mount=type=secret,id=token test \"$(sha256sum < /run/secrets/token | cut -d' ' -f1)\" = "
                f"{hashlib.sha256(secrets[user.name].encode()).hexdigest()} "
                f"&& echo log-of-{user.name}\n"
                f"RUN --mount=type=cache,target=/cache (cat /cache/mark 2>/dev/null || echo empty-cache) "
                f"&& echo {user.name} > /cache/mark && sleep 1\n"))
            with open(path, "w") as f:
                f.write(secrets[user.name])
            os.chmod(path, 0o644)
            builds[user.name] = user.popen(server.address, "build", "--progress", "plain", "-t", f"{user.name}-app",
                                           "--secret", f"id=token,src={path}", context,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        logs = {}
        for name, proc in builds.items():
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()
            logs[name] = err.decode()
        for user, other in ((alice, bob), (bob, alice)):
            assert f"log-of-{user.name}" in logs[user.name] and f"log-of-{other.name}" not in logs[user.name]
            assert "empty-cache" in logs[user.name]          # cache mounts are per user
            assert secrets[other.name] not in logs[user.name]
            mine = user.client(server.address, "images", "--format", "{{.Repository}}")
            assert f"{user.name}-app" in mine.stdout.decode() and other.name not in mine.stdout.decode()
            theirs = f"{other.name}-app"
            other_id = json.loads(other.client(server.address, "inspect", theirs).stdout)[0]["Id"]
            for attempt in (("inspect", theirs), ("inspect", other_id.partition(":")[2][:12]),
                            ("history", theirs), ("tag", theirs, "stolen"), ("rmi", theirs),
                            ("push", f"{busybox_registry.host}/{theirs}"), ("save", theirs)):
                tried = user.client(server.address, *attempt, env={"TERM": "dumb"})
                assert tried.returncode == 1, (attempt, tried.stdout, tried.stderr)
                assert b"No such image" in tried.stderr or b"does not exist" in tried.stderr, (attempt, tried.stderr)
            # A secret the user did not send is no secret of theirs, whoever sent it before.
            thief = _context(server, f"thief-{user.name}",
                             f"FROM {base}\nRUN --mount=type=secret,id=token,required=true cat /run/secrets/token\n")
            stolen = user.client(server.address, "build", "--no-cache", "--progress", "plain", thief)
            assert stolen.returncode == 1 and secrets[other.name].encode() not in stolen.stderr
        assert other.client(server.address, "images", "-q").stdout.strip()   # bob's images are still his
    for name, secret in secrets.items():  # never written to the server's disk
        found = subprocess.run(["grep", "-rl", "--", secret, store_root], capture_output=True, text=True)
        assert found.stdout == ""


def test_a_peer_without_a_passwd_entry_is_refused_on_the_unix_socket(store_root):
    script = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
              "s.sendall(b'GET /v1/ping HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); print(s.recv(100).split()[1].decode())")
    with BuildServer(store_root) as server:
        proc = subprocess.run([SYSTEM_PYTHON, "-c", script, server.address.removeprefix("unix://")],
                              user=54329, group=54329, extra_groups=[], capture_output=True, text=True, timeout=60,
                              cwd="/")
    assert proc.stdout.strip() == "401", proc.stderr


def _https(server, certificates, source: str = "127.0.0.1"):
    host, port = server.tcp_address.removeprefix("tcp://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=certificates.ca)
    return http.client.HTTPSConnection(host, int(port), context=context, timeout=60, source_address=(source, 0))


def _basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def test_pam_login_tokens_and_tls_over_tcp(tls_server, user_ca, users, busybox_registry):
    alice, _ = users
    address = tls_server.tcp_address
    login = alice.client("", "login-server", address, "-u", alice.name, "--password-stdin", "--tls-ca",
                         user_ca, input=f"{alice.password}\n".encode())
    assert login.returncode == 0 and login.stdout.decode().strip() == "Login Succeeded", login.stderr
    tokens = os.path.join(alice.home, ".config", "build-image", "server-tokens.json")
    assert stat.S_IMODE(os.stat(tokens).st_mode) == 0o600 and os.stat(tokens).st_uid == alice.uid
    context = _context(tls_server, "tcp", f"FROM {busybox_registry.reference}\nRUN echo over-tls\n")
    built = alice.client(address, "build", "--progress", "plain", "-t", "via-tls", context,
                         env={"BUILD_IMAGE_TLS_CA": user_ca})
    assert built.returncode == 0 and b"over-tls" in built.stderr, built.stderr
    # The same user's images on the unix socket: one namespace per user, whatever the road.
    assert b"via-tls" in alice.client(tls_server.address, "images").stdout
    no_ca = alice.client(address, "images")
    assert no_ca.returncode == 1 and b"CERTIFICATE_VERIFY_FAILED" in no_ca.stderr
    assert no_ca.stderr.count(b"\n") == 1     # one line, no traceback
    logout = alice.client("", "logout-server", address, "--tls-ca", user_ca)
    assert logout.returncode == 0
    after = alice.client(address, "images", global_flags=("--tls-ca", user_ca))
    assert after.returncode == 1 and b"unauthorized" in after.stderr


def test_wrong_passwords_and_unknown_users_get_401_with_no_detail(tls_server, certificates, user_ca, users):
    alice, _ = users
    answers = []
    for name, password in ((alice.name, "wrong"), ("no-such-user-here", "whatever"), (alice.name, "")):
        connection = _https(tls_server, certificates)
        connection.request("POST", "/v1/login", body=b"{}\n", headers={"Authorization": _basic(name, password)})
        response = connection.getresponse()
        answers.append((response.status, response.read()))
        connection.close()
    assert {status for status, _ in answers} == {401}
    assert len({body for _, body in answers}) == 1          # an unknown user looks like a wrong password
    refused = alice.client("", "login-server", tls_server.tcp_address, "-u", alice.name, "--password-stdin",
                           "--tls-ca", user_ca, input=b"not-the-password\n")
    assert refused.returncode == 1 and refused.stderr.decode().startswith("ERROR: ") and b"unauthorized" in refused.stderr


def test_failed_logins_are_rate_limited_per_user_and_per_address(tls_server, certificates, users):
    alice, bob = users

    def ping(name, password, source="127.0.0.1") -> int:
        connection = _https(tls_server, certificates, source)
        connection.request("GET", "/v1/ping", headers={"Authorization": _basic(name, password)})
        status = connection.getresponse().status
        connection.close()
        return status

    assert [ping(alice.name, "wrong", f"127.0.0.{2 + i}") for i in range(5)] == [401] * 5
    assert ping(alice.name, alice.password, "127.0.0.9") == 429      # her name is locked, from anywhere
    assert ping(bob.name, bob.password, "127.0.0.9") == 200          # bob's is not
    assert [ping(f"nobody{i}", "x", "127.0.0.20") for i in range(5)] == [401] * 5
    assert ping(bob.name, bob.password, "127.0.0.20") == 429         # that address is locked
    assert ping(bob.name, bob.password, "127.0.0.21") == 200


def test_every_endpoint_rejects_unauthenticated_requests(tls_server, certificates, record_property):
    attempts = {"none": {}, "bad basic": {"Authorization": _basic("root", "not-root's-password")},
                "bad token": {"Authorization": "Bearer forged-token"}, "empty": {"Authorization": ""}}
    paths = sorted({path for _, path in ROUTES}) + ["/v1/unknown", "/"]
    results = []
    for method in METHODS:
        for path in paths:
            for kind, headers in attempts.items():
                if kind == "bad basic" and len(results) % 7:   # PAM calls are rate limited; a sample is enough
                    continue
                connection = _https(tls_server, certificates)
                connection.request(method, path, body=b"{}\n" if method != "GET" else None, headers=headers)
                response = connection.getresponse()
                results.append(((method, path, kind), response.status))
                connection.close()
    routed = {(m, p) for (m, p, _), _ in results}
    assert set(ROUTES) <= routed
    rejected = [r for r, status in results if status in (401, 429)]
    assert len(rejected) == len(results), [r for r in results if r[1] not in (401, 429)]
    record_property("figure", f"serve: unauthenticated requests rejected: {len(rejected)}/{len(results)} "
                              f"({len(ROUTES)} routes x {len(METHODS)} methods)")


def test_a_users_prune_removes_only_their_own_images(store_root, users, busybox_registry):
    alice, _ = users
    with BuildServer(store_root) as server:
        context = _context(server, "shared", f"FROM {busybox_registry.reference}\nRUN echo kept > /kept\n")
        mine = _context(server, "alices", f"FROM {busybox_registry.reference}\nRUN echo gone > /gone\n")
        assert server.client("build", "-q", "-t", "roots-image", context).returncode == 0
        assert alice.client(server.address, "build", "-q", "-t", "alices-image", mine).returncode == 0
        shared = alice.client(server.address, "build", "--progress", "plain", "-t", "same-as-roots", context)
        assert shared.returncode == 0 and b"CACHED" in shared.stderr   # the build cache is shared
        pruned = alice.client(server.address, "prune", "-a", "-f")
        assert pruned.returncode == 0, pruned.stderr
        assert alice.client(server.address, "images", "-q").stdout.strip() == b""
        assert server.client("inspect", "roots-image").returncode == 0
        assert server.client("history", "roots-image").returncode == 0
        rebuilt = server.client("build", "--progress", "plain", "-t", "roots-image", context)
        assert rebuilt.returncode == 0 and b"CACHED" in rebuilt.stderr
    fsck = build_image("fsck", "--root", store_root, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_isolate_cache_keeps_each_users_build_cache_apart(store_root, users, busybox_registry):
    alice, _ = users
    with BuildServer(store_root, extra=("--isolate-cache",)) as server:
        context = _context(server, "same", f"FROM {busybox_registry.reference}\nRUN echo once > /once\n")
        assert server.client("build", "-q", context).returncode == 0
        first = alice.client(server.address, "build", "--progress", "plain", context)
        assert first.returncode == 0 and b"CACHED" not in first.stderr.split(b"RUN echo once")[1]
        again = alice.client(server.address, "build", "--progress", "plain", context)
        assert again.returncode == 0 and b"CACHED" in again.stderr
        assert alice.client(server.address, "prune", "-a", "-f", "--cache").returncode == 0
        rebuilt = server.client("build", "--progress", "plain", context)
        assert rebuilt.returncode == 0 and b"CACHED" in rebuilt.stderr   # root's cache survived her prune
    fsck = build_image("fsck", "--root", store_root, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_two_users_build_at_once_over_tls_and_stay_apart(tls_server, user_ca, users, busybox_registry):
    address = tls_server.tcp_address
    for user in users:
        login = user.client("", "login-server", address, "-u", user.name, "--password-stdin", "--tls-ca", user_ca,
                            input=f"{user.password}\n".encode())
        assert login.returncode == 0, login.stderr
    builds = {}
    for user in users:
        context = _context(tls_server, f"tls-{user.name}",
                           f"FROM {busybox_registry.reference}\nRUN echo tls-log-of-{user.name} && sleep 1\n")
        builds[user.name] = subprocess.Popen(
            [SYSTEM_PYTHON, "-m", "builder.cli", "--server", address, "--tls-ca", user_ca, "build", "--progress",
             "plain", "-t", f"tls-{user.name}", context], user=user.uid, group=user.gid, extra_groups=[],
            env=user.env(), cwd=user.home, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    logs = {}
    for name, proc in builds.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        logs[name] = err.decode()
    alice, bob = users
    for user, other in ((alice, bob), (bob, alice)):
        assert f"tls-log-of-{user.name}" in logs[user.name] and f"tls-log-of-{other.name}" not in logs[user.name]
        listed = user.client(address, "images", "--format", "{{.Repository}}", global_flags=("--tls-ca", user_ca))
        assert f"tls-{user.name}" in listed.stdout.decode() and f"tls-{other.name}" not in listed.stdout.decode()
        for attempt in (("inspect", f"tls-{other.name}"), ("rmi", f"tls-{other.name}"),
                        ("tag", f"tls-{other.name}", "mine")):
            tried = user.client(address, *attempt, global_flags=("--tls-ca", user_ca))
            assert tried.returncode == 1 and b"No such image" in tried.stderr, (attempt, tried.stderr)


def test_a_server_with_a_client_ca_wants_a_client_certificate_and_a_login_too(store_root, certificates, tmp_path):
    client_cert, client_key = certificates.client_certificate(str(tmp_path))
    with PamService() as pam, BuildServer(store_root, tls=certificates, pam_service=pam.name,
                                          extra=("--tls-client-ca", certificates.ca)) as server:
        def images(**env):
            return subprocess.run([sys.executable, "-m", "builder.cli", "--server", server.tcp_address,
                                   "--tls-ca", certificates.ca, "images"], capture_output=True, timeout=120,
                                  stdin=subprocess.DEVNULL, env={**os.environ, **env})
        without = images()
        assert without.returncode == 1 and without.stderr.startswith(b"ERROR: ")
        with_cert = images(BUILD_IMAGE_TLS_CERT=client_cert, BUILD_IMAGE_TLS_KEY=client_key)
        assert with_cert.returncode == 1 and b"unauthorized" in with_cert.stderr   # a certificate is no login


# A RUN that asks the agent for its identities 40 times while its output streams down the same
# TLS connection: type 12 (IDENTITIES_ANSWER), the number of keys and the first key's comment.
_ASK_AGENT = (
    "perl -MIO::Socket::UNIX -e '$s=IO::Socket::UNIX->new(Peer=>$ENV{SSH_AUTH_SOCK}) or die \"no agent\"; "
    "for $i (1..40) { print $s pack(\"NC\",1,11); read($s,$h,4)==4 or die \"short\"; $l=unpack(\"N\",$h); "
    "read($s,$b,$l)==$l or die \"short body\"; ($t,$n,$bl)=unpack(\"CNN\",$b); "
    "$c=substr($b,9+$bl); $cl=unpack(\"N\",$c); print \"answer $i: type $t, $n keys, \".substr($c,4,$cl).\"\\n\" }'")


def test_ssh_agents_are_forwarded_over_tls_tcp(tls_server, users, debian_registry, tmp_path):
    """--ssh over TCP: a real ssh-agent holding a real key answers a RUN on the server, its bytes
    going up the TLS connection while the build's frames come down it; nothing stays behind."""
    alice, _ = users
    agent_socket = str(tmp_path / "agent.sock")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "thinclient-test-key", "-f",
                    str(tmp_path / "key")], check=True, capture_output=True)
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", agent_socket], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(agent_socket) and time.monotonic() < deadline:
            time.sleep(0.02)
        subprocess.run(["ssh-add", str(tmp_path / "key")], check=True, capture_output=True,
                       env={**os.environ, "SSH_AUTH_SOCK": agent_socket})
        context = _context(tls_server, "ssh-tcp", f"FROM {debian_registry.reference}\nRUN --mount=type=ssh {_ASK_AGENT}\n")
        login = {"BUILD_IMAGE_USERNAME": alice.name, "BUILD_IMAGE_PASSWORD": alice.password,
                 "BUILD_IMAGE_TLS_CA": tls_server.tls.ca}
        built = tls_server.client("build", "--no-cache", "--progress", "plain", "--ssh", f"default={agent_socket}",
                                  context, address=tls_server.tcp_address, env=login)
        assert built.returncode == 0, built.stderr.decode()[-3000:] + tls_server.log()[-3000:]
        answers = re.findall(r"answer \d+: (.*)", built.stderr.decode().replace("answer $i", ""))
        assert len(answers) == 40 and set(answers) == {"type 12, 1 keys, thinclient-test-key"}
        without = tls_server.client("build", "--no-cache", "--progress", "plain", context,
                                    address=tls_server.tcp_address, env=login)
        assert without.returncode == 1
    finally:
        agent.terminate()
        agent.wait(10)
    assert os.listdir(os.path.join(tls_server.root, "service", "tmp")) == []


def test_login_server_tokens_survive_a_server_restart(tls_server, user_ca, users):
    alice, _ = users
    address = tls_server.tcp_address
    login = alice.client("", "login-server", address, "-u", alice.name, "--password-stdin", "--tls-ca", user_ca,
                         input=f"{alice.password}\n".encode())
    assert login.returncode == 0, login.stderr
    with open(os.path.join(alice.home, ".config", "build-image", "server-tokens.json")) as f:
        token = json.load(f)[address]["token"]
    stored = os.path.join(tls_server.root, "service", "tokens.json")
    assert stat.S_IMODE(os.stat(stored).st_mode) == 0o600 and token not in open(stored).read()
    assert tls_server.stop() == 0
    tls_server.start()
    moved = tls_server.tcp_address   # port 0: the restarted server listens elsewhere; the token is the same
    if moved != address:
        with open(os.path.join(alice.home, ".config", "build-image", "server-tokens.json")) as f:
            tokens = json.load(f)
        tokens[moved] = tokens.pop(address)
        with open(os.path.join(alice.home, ".config", "build-image", "server-tokens.json"), "w") as f:
            json.dump(tokens, f)
    listed = alice.client(moved, "images", global_flags=("--tls-ca", user_ca))
    assert listed.returncode == 0, listed.stderr.decode() + tls_server.log()[-2000:]
    assert alice.client("", "logout-server", moved, "--tls-ca", user_ca).returncode == 0
    assert tls_server.stop() == 0
    tls_server.start()
    connection = _https(tls_server, tls_server.tls)
    connection.request("GET", "/v1/ping", headers={"Authorization": f"Bearer {token}"})
    assert connection.getresponse().status == 401   # logged out before the restart: still out
    connection.close()
