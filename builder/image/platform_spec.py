"""Platform specifiers (`linux/amd64`, `linux/arm/v7`, `arm64`) read and normalised by the rules
BuildKit takes from containerd's `platforms.Parse`: components of [A-Za-z0-9_-], os[/arch[/variant]]
or a lone known os or architecture, aliases folded (x86_64 -> amd64, aarch64 -> arm64, armhf ->
arm/v7), arm's variant defaulting to v7 and arm64's v8 dropped."""

from __future__ import annotations

import re

from builder.errors import BuildError
from builder.image.media import Platform

_COMPONENT = re.compile(r"^[A-Za-z0-9_-]+$")
KNOWN_OS = frozenset("aix android darwin dragonfly freebsd hurd illumos ios js linux nacl netbsd openbsd plan9 "
                     "solaris wasip1 windows zos".split())
KNOWN_ARCH = frozenset("386 amd64 amd64p32 arm armbe arm64 arm64be loong64 mips mipsle mips64 mips64le mips64p32 "
                       "mips64p32le ppc ppc64 ppc64le riscv riscv64 s390 s390x sparc sparc64 wasm".split())
_HOST = Platform("linux", "amd64")


class InvalidPlatform(BuildError):
    """A --platform or FROM --platform value that is not a platform specifier."""


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch in ("i386", "i486", "i586", "i686", "386"):
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant in ("v1", "") else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8", "") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


def parse_platform_specifier(text: str) -> Platform:
    """TEXT as a normalised Platform, or an InvalidPlatform with containerd's message."""
    if "," in text:
        raise InvalidPlatform(f'multi-platform builds are not supported yet ("{text}" names several platforms): '
                              "build each platform on its own until multi-platform images (an image index "
                              "over per-platform builds) land")
    parts = text.split("/")
    for part in parts:
        if not _COMPONENT.match(part):
            raise InvalidPlatform(f'"{part}" is an invalid component of "{text}": platform specifier component '
                                  f"must match \"{_COMPONENT.pattern}\": invalid argument")
    if len(parts) == 1:
        word = parts[0].lower()
        if word in KNOWN_OS or word == "macos":
            return Platform("darwin" if word == "macos" else word, _HOST.architecture)
        arch, variant = _normalize_arch(word, "")
        if arch in KNOWN_ARCH:
            return Platform(_HOST.os, arch, variant)
        raise InvalidPlatform(f'"{text}": unknown operating system or architecture: invalid argument')
    if len(parts) > 3:
        raise InvalidPlatform(f'"{text}": cannot parse platform specifier: invalid argument')
    os_name = parts[0].lower()
    os_name = "darwin" if os_name == "macos" else os_name
    arch, variant = _normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
    return Platform(os_name, arch, variant)


def normalize_platform(text: str) -> str:
    """TEXT in its canonical spelling (`linux/arm64/v8` -> `linux/arm64`)."""
    return str(parse_platform_specifier(text))


def platform_matches(wanted: Platform, os_name: str, arch: str, variant: str) -> bool:
    """Whether an image made for OS_NAME/ARCH/VARIANT serves WANTED (no variant asked: any)."""
    have_arch, have_variant = _normalize_arch(arch or "amd64", variant or "")
    if (os_name or "linux") != wanted.os or have_arch != wanted.architecture:
        return False
    return not wanted.variant or wanted.variant == have_variant
