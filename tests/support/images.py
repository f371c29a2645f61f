"""Running build-image as a user does, and checking its output with real tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import uuid


def build_image(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """`build-image ARGS...` through the installed console script's module, output captured."""
    proc = subprocess.run([sys.executable, "-m", "builder.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"build-image {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def write_context(root, files: dict[str, str]) -> str:
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
    return str(root)


def skopeo_inspect(transport_ref: str, *extra: str) -> dict:
    out = subprocess.run(["skopeo", "inspect", *extra, transport_ref], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def run_oci_archive(archive: str, workdir: str, args: list[str] | None = None, tag: str = "latest") -> str:
    """umoci unpacks the OCI archive, runc runs it (non-interactive); returns stdout."""
    layout = os.path.join(workdir, "layout")
    bundle = os.path.join(workdir, "bundle")
    os.makedirs(layout)
    with tarfile.open(archive) as tf:
        tf.extractall(layout, filter="data")
    unpack = subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", bundle], capture_output=True, text=True)
    if unpack.returncode != 0:
        raise AssertionError(f"umoci unpack failed ({unpack.returncode}): {unpack.stderr.strip()}")
    config_path = os.path.join(bundle, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    if args is not None:
        config["process"]["args"] = args
    with open(config_path, "w") as f:
        json.dump(config, f)
    container = f"bi-test-{uuid.uuid4().hex[:12]}"
    try:
        proc = subprocess.run(["runc", "run", "--bundle", bundle, container], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["runc", "delete", "-f", container], capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"runc run failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def step_lines(progress: str, word: str) -> list[str]:
    """Names of the progress steps (`#N [stage i/n] INSTR ...`) whose block ends with WORD."""
    names: dict[str, str] = {}
    ended: list[str] = []
    for line in progress.splitlines():
        if not line.startswith("#"):
            continue
        number, _, rest = line.partition(" ")
        if rest.startswith("["):
            names.setdefault(number, rest)
        elif rest.split(" ")[0] == word and number in names:
            ended.append(names[number])
    return ended
