"""Timed repeats of one scenario, interleaved between tools so that drift in the machine's load
(the CPUs here are shared) falls on both tools alike."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

from bench.scenarios import Scenario
from bench.tools import BuildOutcome, BuildTool

# (scenario, tool, repeat index or None for the untimed priming build, outcome)
OutcomeCallback = Callable[[str, str, "int | None", BuildOutcome], None]


@dataclass(frozen=True)
class Series:
    """The wall times of one tool on one scenario; a failed build ends the series with ERROR."""

    tool: str
    scenario: str
    seconds: tuple[float, ...]
    error: str = ""
    peak_rss: tuple[int, ...] = ()     # bytes per timed run, where the tool reported one

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    @property
    def max_rss(self) -> int | None:
        return max(self.peak_rss) if self.peak_rss else None


class _Recorder:
    """Collects one scenario's outcomes per tool; a tool that failed once is not asked again."""

    def __init__(self, scenario: str, tools: Sequence[BuildTool]):
        self.scenario = scenario
        self.times: dict[str, list[float]] = {tool.name: [] for tool in tools}
        self.rss: dict[str, list[int]] = {tool.name: [] for tool in tools}
        self.errors: dict[str, str] = {}

    def failed(self, tool: str) -> bool:
        return tool in self.errors

    def add(self, tool: str, outcome: BuildOutcome) -> None:
        if not outcome.ok:
            self.errors[tool] = outcome.error
            return
        self.times[tool].append(outcome.seconds)
        if outcome.peak_rss:
            self.rss[tool].append(outcome.peak_rss)

    def series(self) -> dict[str, Series]:
        return {tool: Series(tool, self.scenario, tuple(self.times[tool]), self.errors.get(tool, ""),
                             tuple(self.rss[tool]))
                for tool in self.times}


def settle() -> None:
    """Write every dirty page to disk, untimed, before a timed build: otherwise the writeback of
    what the previous build (often the other tool's) left in the page cache runs into this one.
    build-image syncs its store before it names anything; dockerd leaves its layers to writeback."""
    os.sync()


def measure(scenario: Scenario, tools: Sequence[BuildTool], context: str, repeat: int,
            on_outcome: OutcomeCallback = lambda *args: None,
            before_build: Callable[[], None] | None = None) -> dict[str, Series]:
    """Time REPEAT builds of CONTEXT per tool. A cached scenario is primed by one untimed build;
    a cold one passes --no-cache every time. BEFORE_BUILD runs (untimed) before every timed build.
    A tool whose build fails is not asked again."""
    record = _Recorder(scenario.name, tools)
    if scenario.cached:
        for tool in tools:
            outcome = tool.build(context, no_cache=False, network=scenario.network, tag=scenario.tag)
            on_outcome(scenario.name, tool.name, None, outcome)
            if not outcome.ok:
                record.add(tool.name, outcome)
    for index in range(repeat):
        for tool in tools:
            if record.failed(tool.name):
                continue
            if before_build is not None:
                before_build()
            settle()
            outcome = tool.build(context, no_cache=not scenario.cached, network=scenario.network,
                                 tag=scenario.tag)
            on_outcome(scenario.name, tool.name, index, outcome)
            record.add(tool.name, outcome)
    return record.series()


def measure_image_steps(build: Scenario, steps: Sequence[Scenario], tools: Sequence[BuildTool], context: str,
                        repeat: int, fresh_registry: Callable[[], ContextManager[str]],
                        on_outcome: OutcomeCallback = lambda *args: None) -> dict[str, dict[str, Series]]:
    """BUILD (cold, named BUILD.tag) and then STEPS on the image it made, per repeat and tool: a
    push goes to a registry of its own (FRESH_REGISTRY yields its host), so every blob is
    compressed and uploaded; a save writes an archive that is removed afterwards. Each repeat
    pushes an image built just before, whose layers no registry has seen."""
    cases = [build, *steps]
    records = {case.name: _Recorder(case.name, tools) for case in cases}
    with tempfile.TemporaryDirectory(prefix="bench-save-") as scratch:
        for index in range(repeat):
            for tool in tools:
                if any(records[case.name].failed(tool.name) for case in cases):
                    continue
                settle()
                outcome = tool.build(context, no_cache=True, network=build.network, tag=build.tag)
                on_outcome(build.name, tool.name, index, outcome)
                records[build.name].add(tool.name, outcome)
                if not outcome.ok:
                    for step in steps:
                        records[step.name].add(tool.name, BuildOutcome(0.0, False, f"{build.name} failed"))
                    continue
                for step in steps:
                    settle()
                    outcome = _image_step(step, tool, build.tag, index, scratch, fresh_registry)
                    on_outcome(step.name, tool.name, index, outcome)
                    records[step.name].add(tool.name, outcome)
    return {case.name: records[case.name].series() for case in cases}


def _image_step(step: Scenario, tool: BuildTool, image: str, index: int, scratch: str,
                fresh_registry: Callable[[], ContextManager[str]]) -> BuildOutcome:
    if step.step == "save":
        dest = os.path.join(scratch, f"{tool.name}-{index}.tar")
        try:
            return tool.save(image, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
    with fresh_registry() as host:
        name = f"{host}/{image.partition(':')[0]}:{index}"
        named = tool.tag(image, name)
        if not named.ok:
            return BuildOutcome(0.0, False, f"tagging {name} failed:\n{named.error}")
        return tool.push(name)
