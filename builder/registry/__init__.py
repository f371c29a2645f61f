"""Talking to OCI registries: references, pull, resolve, push and authentication.

Re-exports are resolved on first use, so parsing a reference does not pay for http.client.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CredentialStore": "auth", "Credentials": "auth",
    "MANIFEST_ACCEPT": "client", "PulledImage": "client", "RegistryClient": "client",
    "normalize_platform": "platforms", "select_manifest": "platforms",
    "InvalidReference": "reference", "Reference": "reference", "parse_reference": "reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
