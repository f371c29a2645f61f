"""Canonical JSON: the bytes every digest is taken over (vertices, configs, manifests, indexes),
and the one reader of untrusted JSON documents (a manifest, an index, a cache config)."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8 (not ASCII escapes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_object(data: bytes) -> dict:
    """DATA as a JSON object; ValueError saying what it is instead ("not JSON", "not a JSON object")."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc
