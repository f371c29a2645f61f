"""Talking to OCI registries: references, pull, resolve, push and authentication.

Re-exports are resolved on first use, so parsing a reference does not pay for http.client.
"""

from __future__ import annotations

from builder.plumbing.lazy import lazy_exports

_EXPORTS = {
    "CredentialStore": "auth", "Credentials": "auth",
    "MANIFEST_ACCEPT": "client", "PulledImage": "client", "RegistryClient": "client",
    "normalize_platform": "platforms", "select_manifest": "platforms",
    "InvalidReference": "reference", "Reference": "reference", "parse_reference": "reference",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
