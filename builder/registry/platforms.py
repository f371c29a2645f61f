"""Choosing the right manifest from an image index for a platform.

Platforms are compared after normalisation (x86_64 is amd64, aarch64 is arm64, arm64 without a
variant is arm64/v8, arm without one is arm/v7). A request without a variant takes the
architecture's default variant first, then any. A request for a variant also accepts older
variants of the same architecture (arm/v7 runs arm/v6 images, amd64/v3 runs amd64/v2), the
newest first, as containerd's platform matcher does.
"""

from __future__ import annotations

from typing import Iterable

from builder.image.media import Descriptor, Platform

_ARCH_ALIASES = {
    "x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"), "armel": ("arm", "v6"), "i386": ("386", ""), "i686": ("386", ""),
}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7", "amd64": "v1"}


def normalize_platform(platform: Platform) -> Platform:
    arch, variant = platform.architecture.lower(), platform.variant.lower()
    if arch in _ARCH_ALIASES:
        arch, implied = _ARCH_ALIASES[arch]
        variant = variant or implied
    if variant and variant[0].isdigit():
        variant = "v" + variant
    return Platform(platform.os.lower(), arch, variant or _DEFAULT_VARIANT.get(arch, ""))


def _variant_number(variant: str) -> int | None:
    return int(variant[1:]) if variant[:1] == "v" and variant[1:].isdigit() else None


def select_manifest(entries: Iterable[Descriptor], wanted: Platform) -> Descriptor | None:
    """The index entry that best runs on WANTED, or None. Entries without a platform never match."""
    want = normalize_platform(wanted)
    explicit_variant = bool(wanted.variant)
    best: tuple[int, int] | None = None
    chosen: Descriptor | None = None
    for position, entry in enumerate(entries):
        if entry.platform is None:
            continue
        have = normalize_platform(entry.platform)
        if (have.os, have.architecture) != (want.os, want.architecture):
            continue
        rank = _variant_rank(have.variant, want.variant, explicit_variant)
        if rank is None:
            continue
        if best is None or (rank, position) < best:
            best, chosen = (rank, position), entry
    return chosen


def _variant_rank(have: str, want: str, explicit: bool) -> int | None:
    """0 is an exact match; larger is a worse but usable match; None cannot run."""
    if have == want:
        return 0
    if not explicit:
        return 1  # no variant asked for: any variant of the architecture will do
    have_n, want_n = _variant_number(have), _variant_number(want)
    if have_n is not None and want_n is not None and have_n < want_n:
        return 1 + (want_n - have_n)
    return None
