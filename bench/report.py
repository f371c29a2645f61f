"""Medians, ratios (build-image time / BuildKit time) against their targets, and each side's peak
RSS: as a table and as JSON. A ratio's [min-max] pairs the tools' runs of the same repeat (they
ran one after the other), so it shows how far the ratio moved as the machine's load did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from bench.measure import Series
from bench.scenarios import ISSUE_NAMES
from bench.tools import BuildImage, BuildKit

PER_RUN_OVERHEAD = "per-RUN overhead"
# Upper bounds for the ratio build-image / BuildKit; rows without one are shown for context.
TARGETS = {PER_RUN_OVERHEAD: 0.5, "cold-20-run": 0.5, "cold-20-run-none": 0.5, "cached-20-run": 1.0,
           "two-stages": 0.9, "two-stages-none": 0.9, "copy-cold": 0.67, "copy-one-changed": 0.5, "dd-cold": 0.67, "push-dd": 0.8}
ROW_ORDER = ("cold-1-run", "cold-20-run", "cold-20-run-none", PER_RUN_OVERHEAD, "cached-20-run", "two-stages", "two-stages-none",
             "copy-cold", "copy-one-changed", "dd-cold", "push-dd", "save-dd")

Results = Mapping[str, Mapping[str, Series]]     # scenario -> tool -> series


@dataclass(frozen=True)
class Stat:
    median: float
    min: float | None = None     # None for a value derived from medians
    max: float | None = None
    runs: tuple[float, ...] = ()  # every timed run, in repeat order


@dataclass(frozen=True)
class Cell:
    """One tool's figure in one row: a Stat, or why there is none."""

    stat: Stat | None
    problem: str = ""            # "failed", "unavailable", "not measured"
    peak_rss: int | None = None  # bytes: the largest over the timed runs


@dataclass(frozen=True)
class Row:
    label: str
    build_image: Cell
    buildkit: Cell
    target: float | None
    unit: str = "s"              # "s" or "ms"

    @property
    def title(self) -> str:
        issue = ISSUE_NAMES.get(self.label)
        return f"{issue} {self.label}" if issue else self.label

    @property
    def ratio(self) -> float | None:
        if self.build_image.stat is None or self.buildkit.stat is None or self.buildkit.stat.median <= 0:
            return None
        return self.build_image.stat.median / self.buildkit.stat.median

    @property
    def ratio_range(self) -> tuple[float, float] | None:
        """(min, max) of the per-repeat ratios; without paired runs, the extremes of the two ranges."""
        ours, theirs = self.build_image.stat, self.buildkit.stat
        if ours is None or theirs is None or ours.min is None or theirs.min is None:
            return None
        if len(ours.runs) == len(theirs.runs) and ours.runs and all(t > 0 for t in theirs.runs):
            ratios = [a / b for a, b in zip(ours.runs, theirs.runs)]
            return min(ratios), max(ratios)
        if theirs.min <= 0:
            return None
        return ours.min / theirs.max, ours.max / theirs.min

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
    return Cell(Stat(series.median, series.min, series.max, series.seconds), peak_rss=series.max_rss)


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


def _format_ratio(row: Row) -> str:
    if row.ratio is None:
        return "-"
    spread = row.ratio_range
    return f"{row.ratio:.2f}x" + (f" [{spread[0]:.2f}-{spread[1]:.2f}]" if spread else "")


def _format_rss(row: Row) -> str:
    values = [row.build_image.peak_rss, row.buildkit.peak_rss]
    if values == [None, None]:
        return "-"
    return " / ".join("-" if v is None else f"{v / (1 << 20):.0f}" for v in values)


def format_table(rows: list[Row]) -> str:
    """Fixed-width table: medians with [min-max], the ratio with its [min-max], the target,
    PASS/FAIL, and the peak RSS of each side in MiB."""
    header = ("scenario", "build-image median [min-max]", "buildkit median [min-max]", "ratio [min-max]",
              "target", "", "peak RSS MiB (bi / bk)")
    lines = [header]
    for row in rows:
        lines.append((
            row.title,
            _format_cell(row.build_image, row.unit),
            _format_cell(row.buildkit, row.unit),
            _format_ratio(row),
            "-" if row.target is None else f"<= {row.target:g}x",
            row.verdict,
            _format_rss(row),
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
                tool: {"seconds": list(series.seconds), "ok": series.ok, "error": series.error or None,
                       "peak_rss_bytes": list(series.peak_rss)}
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
                "issue": ISSUE_NAMES.get(row.label),
                "build_image_median_seconds": row.build_image.stat.median if row.build_image.stat else None,
                "buildkit_median_seconds": row.buildkit.stat.median if row.buildkit.stat else None,
                "ratio": row.ratio,
                "ratio_range": list(row.ratio_range) if row.ratio_range else None,
                "build_image_peak_rss_bytes": row.build_image.peak_rss,
                "buildkit_peak_rss_bytes": row.buildkit.peak_rss,
                "target": row.target,
                "verdict": row.verdict or None,
            }
            for row in rows
        ],
    }
