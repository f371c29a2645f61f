"""Token authentication for tests: a registry that trusts a token server, and the token server.

    with token_auth_registry(workdir, ("erin", "t0ken-pw")) as (reg, tokens):
        reg.host            -> the docker-registry (`auth: token:`), a support.registry.Registry
        tokens.requests     -> every token request: {"scope": [...], "service": [...]}

The token server issues registry JWTs (RS256 with an x5c header, signed by openssl with a fresh
self-signed certificate the registry is configured to trust) to one user with Basic credentials.
Both servers are stopped on exit, whatever happened inside.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

from .httpserver import LoopbackHTTPServer
from .registry import Registry

ISSUER = "test-issuer"
SERVICE = "test-registry"


class TokenServer(LoopbackHTTPServer):
    """Issues registry JWTs (RS256, x5c header) for one user, signed with openssl; logs requests."""

    def __init__(self, key: str, cert_der: bytes, issuer: str, service: str, user: tuple[str, str]):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = parse_qs(urlsplit(self.path).query)
                sent = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
                server.requests.append({"scope": query.get("scope", []), "service": query.get("service")})
                if sent != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                access = []
                for scope in query.get("scope", []):
                    kind, name, actions = scope.split(":")
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
                body = json.dumps({"token": server.sign(access), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._key, self._cert_der, self._issuer, self._service = key, cert_der, issuer, service
        self._user = user[0]
        super().__init__(Handler)
        self.realm = f"{self.url}/token"

    def sign(self, access: list[dict]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {"iss": self._issuer, "sub": self._user, "aud": self._service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self._key], input=signing_input.encode(),
                                   check=True, capture_output=True).stdout
        return f"{signing_input}.{b64(signature)}"


@contextlib.contextmanager
def token_auth_registry(workdir: str, user: tuple[str, str]) -> Iterator[tuple[Registry, TokenServer]]:
    """A docker-registry with `auth: token:` trusting a fresh self-signed cert (made in WORKDIR),
    and the token server that issues tokens to USER."""
    key, cert = os.path.join(workdir, "token.key"), os.path.join(workdir, "token.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=test-token-issuer"], check=True, capture_output=True)
    cert_der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], check=True,
                              capture_output=True).stdout
    with TokenServer(key, cert_der, ISSUER, SERVICE, user) as tokens:
        auth = {"token": {"realm": tokens.realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": cert}}
        with Registry(auth=auth) as reg:
            yield reg, tokens
