"""A real registry for tests: Debian's docker-registry (distribution 2.8) on a free loopback port.

    with Registry() as reg:                      # anonymous
        reg.host  -> "127.0.0.1:41234"
    with Registry(htpasswd=("alice", "s3cret")): # Basic auth
    with Registry(auth={"token": {...}}):        # any other `auth:` section (token auth)
    with Registry(access_log=True) as reg:       # reg.requests(): every (method, path) it served

The process and its storage directory are removed on exit, whatever happened inside.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

_LISTENING = re.compile(r"listening on (\S+?):(\d+)")
_START_TIMEOUT = 15.0


class Registry:
    def __init__(self, *, htpasswd: tuple[str, str] | None = None, auth: dict | None = None,
                 access_log: bool = False):
        if htpasswd and auth:
            raise ValueError("give htpasswd or auth, not both")
        self._access_log = access_log
        self._htpasswd = htpasswd
        self._auth = auth
        self._dir: str | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None
        self.host = ""
        self.url = ""

    @property
    def log_path(self) -> str:
        assert self._dir
        return os.path.join(self._dir, "registry.log")

    def __enter__(self) -> "Registry":
        self._dir = tempfile.mkdtemp(prefix="test-registry-")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": not self._access_log}},
            "storage": {"filesystem": {"rootdirectory": os.path.join(self._dir, "storage")},
                        "delete": {"enabled": True}},
            "http": {"addr": "127.0.0.1:0"},
        }
        if self._htpasswd:
            user, password = self._htpasswd
            path = os.path.join(self._dir, "htpasswd")
            line = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                                  capture_output=True, text=True).stdout.strip()
            with open(path, "w") as f:
                f.write(line + "\n")
            config["auth"] = {"htpasswd": {"realm": "test-registry", "path": path}}
        elif self._auth:
            config["auth"] = self._auth
        config_path = os.path.join(self._dir, "config.yml")
        with open(config_path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        self._log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(["docker-registry", "serve", config_path], stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.host = self._wait_for_address()
        self.url = f"http://{self.host}"
        self._wait_until_ready()

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                m = _LISTENING.search(f.read().decode(errors="replace"))
            if m:
                return f"{m.group(1)}:{m.group(2)}"
            if self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self._proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"docker-registry did not report its address in {_START_TIMEOUT}s:\n{self.log()}")

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"docker-registry at {self.host} never answered /v2/:\n{self.log()}")

    def requests(self) -> list[tuple[str, str]]:
        """(method, path with query) of each request so far, from the access log (access_log=True)."""
        with open(self.log_path, "rb") as f:
            text = f.read().decode(errors="replace")
        return re.findall(r'"([A-Z]+) (/v2/\S*) HTTP/[\d.]+"', text)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except (OSError, AssertionError):
            return ""

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
