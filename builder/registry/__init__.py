"""Talking to OCI registries: references, pull, resolve, push and authentication."""

from .auth import CredentialStore, Credentials
from .client import MANIFEST_ACCEPT, PulledImage, RegistryClient
from .platforms import normalize_platform, select_manifest
from .reference import InvalidReference, Reference, parse_reference

__all__ = [
    "CredentialStore", "Credentials", "InvalidReference", "MANIFEST_ACCEPT", "PulledImage", "Reference",
    "RegistryClient", "normalize_platform", "parse_reference", "select_manifest",
]
