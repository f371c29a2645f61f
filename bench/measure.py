"""Timed repeats of one scenario, interleaved between tools so that drift in the machine's load
(the CPUs here are shared) falls on both tools alike."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

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


def measure(scenario: Scenario, tools: Sequence[BuildTool], context: str, repeat: int,
            on_outcome: OutcomeCallback = lambda *args: None) -> dict[str, Series]:
    """Time REPEAT builds of CONTEXT per tool. A cached scenario is primed by one untimed build;
    a cold one passes --no-cache every time. A tool whose build fails is not asked again."""
    times: dict[str, list[float]] = {tool.name: [] for tool in tools}
    errors: dict[str, str] = {}
    if scenario.cached:
        for tool in tools:
            outcome = tool.build(context, no_cache=False, network=scenario.network)
            on_outcome(scenario.name, tool.name, None, outcome)
            if not outcome.ok:
                errors[tool.name] = outcome.error
    for index in range(repeat):
        for tool in tools:
            if tool.name in errors:
                continue
            outcome = tool.build(context, no_cache=not scenario.cached, network=scenario.network)
            on_outcome(scenario.name, tool.name, index, outcome)
            if outcome.ok:
                times[tool.name].append(outcome.seconds)
            else:
                errors[tool.name] = outcome.error
    return {tool.name: Series(tool.name, scenario.name, tuple(times[tool.name]), errors.get(tool.name, ""))
            for tool in tools}
