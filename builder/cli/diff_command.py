"""`build-image diff [--flatten] [--format text|json] A B`: what differs between two images.

Exit status as diff(1): 0 when the images are the same, 1 when they differ (or on an error,
which is one ERROR line)."""

from __future__ import annotations

import json
import sys

from builder.cli.runner import run_command
from builder.cli.usage import UsageParser

REPORT_FILES_PER_LAYER = 40   # the verifier's text report; its JSON and `diff` list every file
SOURCES = "NAME|ID, oci-archive:FILE, docker-archive:FILE, oci:DIR[:TAG] or docker://REF"


def cmd_diff(argv: list[str]) -> int:
    p = UsageParser(prog="build-image diff", description="Compare two images: config, then files.")
    p.add_argument("a", metavar="A", help=SOURCES)
    p.add_argument("b", metavar="B", help=SOURCES)
    p.add_argument("--flatten", action="store_true", help="compare the file systems, not layer by layer")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--insecure-registry", action="append", default=[], help="use plain HTTP for this registry")
    p.add_argument("--root", help="store root (default: $BUILD_IMAGE_ROOT or ~/.local/share/build-image)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.diff import diff
        from builder.store import Store

        result = diff(Store(ns.root), ns.a, ns.b, flatten=ns.flatten, insecure_registries=ns.insecure_registry)
        if ns.format == "json":
            print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
        else:
            sys.stdout.write(render_diff(result))
        return 0 if result.identical else 1

    return run_command(run, ns.debug)


def render_diff(result) -> str:
    """The text report: both images, the config fields that differ, then each differing layer."""
    lines = [f"A: {result.a.source}  {result.a.image_id}", f"B: {result.b.source}  {result.b.image_id}"]
    if result.identical:
        return "\n".join(lines + ["identical"]) + "\n"
    if result.config:
        lines.append("config:")
        lines += [f"  {c.field}: {_show(c.a)} -> {_show(c.b)}" for c in result.config]
    for layer in result.layers:
        lines += render_layer(layer)
    return "\n".join(lines) + "\n"


def render_layer(layer, indent: str = "", limit: int | None = None) -> list[str]:
    """A layer's head line and its file changes (at most LIMIT of them, then a count)."""
    if layer.index is None:
        head = "file system (flattened)"
    else:
        step = layer.step_b or layer.step_a
        head = f"layer {layer.index}" + (f" ({step})" if step else "")
        head += f": {layer.a or '(none)'} -> {layer.b or '(none)'}"
    lines = [indent + head]
    shown = layer.files if limit is None else layer.files[:limit]
    for change in shown:
        if change.change == "changed":
            fields = "; ".join(f"{f.field} {_bare(f.a)} -> {_bare(f.b)}" for f in change.fields)
            lines.append(f"{indent}  changed {change.path}: {fields}")
        else:
            lines.append(f"{indent}  {change.change} {change.path}")
    if len(shown) < len(layer.files):
        lines.append(f"{indent}  ... and {len(layer.files) - len(shown)} more files (--format json lists every one)")
    if not layer.files:
        lines.append(f"{indent}  (same files; the tar bytes differ)")
    return lines


def _show(value) -> str:
    """A config value as JSON (strings quoted: they may hold spaces and arrows)."""
    return "(none)" if value is None else json.dumps(value, ensure_ascii=False)


def _bare(value) -> str:
    """A file field: digests, modes, times and link targets as they are."""
    if isinstance(value, str):
        return value or '""'
    return _show(value)


def report_verification(verified, output_format: str) -> int:
    """`build --verify-reproducible`'s answer: exit 0 with `reproducible: ID`, else 1 and the report."""
    if output_format == "json":
        print(json.dumps(verified.to_json(), indent=2, ensure_ascii=False))
        return 0 if verified.reproducible else 1
    if verified.reproducible:
        print(f"reproducible: {verified.image_id}")
        return 0
    lines = [f"not reproducible: {verified.image_id} (first build) != {verified.second_image_id} (second build)",
             "varied:"]
    lines += [f"  {what}: {how}" for what, how in verified.varied]
    found = verified.diff
    if found.config:
        lines.append("config:")
        lines += [f"  {c.field}: {_show(c.a)} -> {_show(c.b)}" for c in found.config]
    for layer in found.layers:
        lines += render_layer(layer, limit=REPORT_FILES_PER_LAYER)
    if verified.suggestions:
        lines.append("suggestions:")
        lines += [f"  {s.advice}" for s in verified.suggestions]
    print("\n".join(lines))
    return 1
