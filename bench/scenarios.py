"""The Dockerfiles that are timed, and the busy loop that makes a stage cost about a second of CPU.

No Dockerfile here has a `# syntax=` line: BuildKit would try to fetch a frontend image from the
internet. Every RUN is different from every other, so BuildKit cannot merge two of them into one
vertex (it would, for two identical RUNs on the same base in two stages).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

BUSYBOX = "/bin/busybox"

# One shell loop, used both to calibrate on the host and inside the image (same busybox sh there).
_LOOP = "i=0; while [ $i -lt {count} ]; do i=$((i+1)); done"


@dataclass(frozen=True)
class Scenario:
    name: str
    dockerfile: str
    cached: bool          # False: every timed build has --no-cache; True: timed rebuilds of a primed cache
    description: str
    network: str = "default"   # build-image's --network (BuildKit's runs always have --network=none)


def trivial_runs(base: str, count: int) -> str:
    """FROM BASE and COUNT trivial RUN steps, each writing its own file."""
    return f"FROM {base}\n" + "".join(f"RUN echo {n} > /f{n}\n" for n in range(1, count + 1))


def busy_loop(count: int) -> str:
    return _LOOP.format(count=count)


def two_stages(base: str, loop_count: int) -> str:
    """Two independent stages that each burn about a second of CPU, and a final stage using both."""
    return (
        f"FROM {base} AS left\n"
        f"RUN {busy_loop(loop_count)}; echo left > /left\n"
        f"\n"
        f"FROM {base} AS right\n"
        f"RUN {busy_loop(loop_count)}; echo right > /right\n"
        f"\n"
        f"FROM {base}\n"
        f"COPY --from=left /left /left\n"
        f"COPY --from=right /right /right\n"
    )


def scenarios(base: str, loop_count: int) -> list[Scenario]:
    """All timed cases, in the order they run. cold-1-run only serves the per-RUN overhead."""
    twenty = trivial_runs(base, 20)
    return [
        Scenario("cold-1-run", trivial_runs(base, 1), False, "FROM + 1 trivial RUN, --no-cache"),
        Scenario("cold-20-run", twenty, False, "FROM + 20 trivial RUNs, --no-cache (build-image: default network)"),
        Scenario("cold-20-run-none", trivial_runs(base, 20), False,
                 "the same, build-image with --network none", network="none"),
        Scenario("cached-20-run", twenty, True, "the same 20 RUNs, fully cached rebuild"),
        Scenario("two-stages", two_stages(base, loop_count), False,
                 "two independent ~1 s CPU stages + COPY --from both, --no-cache"),
    ]


def write_context(directory: str, dockerfile: str) -> str:
    """A build context holding only DOCKERFILE; returns DIRECTORY."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "Dockerfile"), "w") as f:
        f.write(dockerfile)
    return directory


def time_loop(count: int, busybox: str = BUSYBOX) -> float:
    """Wall seconds for `busybox sh -c LOOP` with COUNT iterations on the host."""
    start = time.perf_counter()
    subprocess.run([busybox, "sh", "-c", busy_loop(count)], check=True)
    return time.perf_counter() - start


def calibrate_loop(target_seconds: float = 1.0, busybox: str = BUSYBOX) -> int:
    """The loop count that takes about TARGET_SECONDS in busybox sh on this host.

    Grows a probe until it runs long enough to time well (a quarter of the target), scales it
    linearly, then takes the fastest of two checks of the result to correct the estimate.
    """
    count = 10_000
    while True:
        seconds = time_loop(count, busybox)
        if seconds >= target_seconds / 4 or count >= 1 << 30:
            break
        count *= 4
    count = max(1, round(count * target_seconds / seconds))
    seconds = min(time_loop(count, busybox) for _ in range(2))
    return max(1, round(count * target_seconds / seconds))
