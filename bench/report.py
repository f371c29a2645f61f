"""Medians, ratios (build-image time / BuildKit time) against their targets: as a table and as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from bench.measure import Series
from bench.tools import BuildImage, BuildKit

PER_RUN_OVERHEAD = "per-RUN overhead"
# Upper bounds for the ratio build-image / BuildKit; rows without one are shown for context.
TARGETS = {PER_RUN_OVERHEAD: 0.5, "cold-20-run": 0.5, "cold-20-run-none": 0.5, "cached-20-run": 1.0,
           "two-stages": 1.0}
ROW_ORDER = ("cold-1-run", "cold-20-run", "cold-20-run-none", PER_RUN_OVERHEAD, "cached-20-run", "two-stages")

Results = Mapping[str, Mapping[str, Series]]     # scenario -> tool -> series


@dataclass(frozen=True)
class Stat:
    median: float
    min: float | None = None     # None for a value derived from medians
    max: float | None = None


@dataclass(frozen=True)
class Cell:
    """One tool's figure in one row: a Stat, or why there is none."""

    stat: Stat | None
    problem: str = ""            # "failed", "unavailable", "not measured"


@dataclass(frozen=True)
class Row:
    label: str
    build_image: Cell
    buildkit: Cell
    target: float | None
    unit: str = "s"              # "s" or "ms"

    @property
    def ratio(self) -> float | None:
        if self.build_image.stat is None or self.buildkit.stat is None or self.buildkit.stat.median <= 0:
            return None
        return self.build_image.stat.median / self.buildkit.stat.median

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.ratio is None:
            return "n/a"
        return "PASS" if self.ratio <= self.target else "FAIL"


def _cell(results: Results, scenario: str, tool: str, tool_available: bool) -> Cell:
    if not tool_available:
        return Cell(None, "unavailable")
    series = results.get(scenario, {}).get(tool)
    if series is None:
        return Cell(None, "not measured")
    if not series.ok:
        return Cell(None, "failed")
    return Cell(Stat(series.median, series.min, series.max))


def per_run_overhead(results: Results, tool: str) -> float | None:
    """(median cold 20-RUN time - median cold 1-RUN time) / 19, in seconds."""
    many, one = results.get("cold-20-run", {}).get(tool), results.get("cold-1-run", {}).get(tool)
    if many is None or one is None or not many.ok or not one.ok:
        return None
    return (many.median - one.median) / 19


def _overhead_cell(results: Results, tool: str, tool_available: bool) -> Cell:
    if not tool_available:
        return Cell(None, "unavailable")
    value = per_run_overhead(results, tool)
    return Cell(None, "failed") if value is None else Cell(Stat(value))


def build_rows(results: Results, *, buildkit_available: bool = True) -> list[Row]:
    rows = []
    for label in ROW_ORDER:
        if label == PER_RUN_OVERHEAD and "cold-20-run" in results:
            rows.append(Row(label, _overhead_cell(results, BuildImage.name, True),
                            _overhead_cell(results, BuildKit.name, buildkit_available), TARGETS[label], "ms"))
        elif label in results:
            rows.append(Row(label, _cell(results, label, BuildImage.name, True),
                            _cell(results, label, BuildKit.name, buildkit_available), TARGETS.get(label)))
    return rows


def _format_cell(cell: Cell, unit: str) -> str:
    if cell.stat is None:
        return cell.problem.upper() if cell.problem == "failed" else cell.problem
    scale, digits = (1000.0, 1) if unit == "ms" else (1.0, 3)
    text = f"{cell.stat.median * scale:.{digits}f} {unit}"
    if cell.stat.min is not None and cell.stat.max is not None:
        text += f" [{cell.stat.min * scale:.{digits}f}-{cell.stat.max * scale:.{digits}f}]"
    return text


def format_table(rows: list[Row]) -> str:
    """Fixed-width table: medians with [min-max], the ratio, the target and PASS/FAIL."""
    header = ("scenario", "build-image median [min-max]", "buildkit median [min-max]", "ratio", "target", "")
    lines = [header]
    for row in rows:
        lines.append((
            row.label,
            _format_cell(row.build_image, row.unit),
            _format_cell(row.buildkit, row.unit),
            "-" if row.ratio is None else f"{row.ratio:.2f}x",
            "-" if row.target is None else f"<= {row.target:.1f}x",
            row.verdict,
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def format_facts(facts: Mapping[str, str]) -> str:
    width = max(len(key) for key in facts)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in facts.items())


def to_json(results: Results, rows: list[Row], facts: Mapping[str, str],
            settings: Mapping[str, object]) -> dict:
    """The raw numbers (every timed run), the derived values and the verdicts."""
    return {
        "machine": dict(facts),
        "settings": dict(settings),
        "runs": {
            scenario: {
                tool: {"seconds": list(series.seconds), "ok": series.ok, "error": series.error or None}
                for tool, series in by_tool.items()
            }
            for scenario, by_tool in results.items()
        },
        "per_run_overhead_seconds": {
            tool: per_run_overhead(results, tool) for tool in (BuildImage.name, BuildKit.name)
        },
        "rows": [
            {
                "scenario": row.label,
                "build_image_median_seconds": row.build_image.stat.median if row.build_image.stat else None,
                "buildkit_median_seconds": row.buildkit.stat.median if row.buildkit.stat else None,
                "ratio": row.ratio,
                "target": row.target,
                "verdict": row.verdict or None,
            }
            for row in rows
        ],
    }
