"""build-image installed the way its users install it, for timing: a regular (not editable) install
of this checkout in a virtual environment of its own, as ``pipx install`` or ``pip install`` into a
venv would make it.

The development checkout's editable install answers ``import builder`` through a finder hook that
site runs at every start, and a shared interpreter may carry other packages' .pth hooks and
optional speed-ups that change what the dependencies import (lark picks up ``regex`` if it finds
it). Those costs are the checkout's, not the product's; a user's install has none of them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def venv_dir() -> str:
    """One venv per set of declared dependencies (pyproject.toml), under the user's cache."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        key = hashlib.sha256(f.read() + sys.version.encode()).hexdigest()[:12]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "build-image", f"bench-venv-{key}")


def user_install(log) -> str | None:
    """The console script of a fresh regular install of this checkout (the venv is made once, with
    the dependencies; the project itself is reinstalled on every call); None if pip fails."""
    venv = venv_dir()
    pip = os.path.join(venv, "bin", "pip")
    try:
        if not os.access(pip, os.X_OK):
            log(f"making {venv} (once per pyproject.toml) ...")
            subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
            subprocess.run([pip, "install", "-q", REPO], check=True, capture_output=True, text=True)
        else:
            subprocess.run([pip, "install", "-q", "--no-deps", "--force-reinstall", REPO], check=True,
                           capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        log(f"could not install build-image into {venv}: {(e.stderr or '').strip()[-500:]}")
        return None
    script = os.path.join(venv, "bin", "build-image")
    return script if os.access(script, os.X_OK) else None
