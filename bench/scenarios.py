"""The Dockerfiles that are timed, their generated contexts, and the busy loop that makes a stage
cost about a second of CPU.

No Dockerfile here has a `# syntax=` line: BuildKit would try to fetch a frontend image from the
internet. Every RUN is different from every other, so BuildKit cannot merge two of them into one
vertex (it would, for two identical RUNs on the same base in two stages). Big contexts are made
under the run's temporary directory, never committed.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from dataclasses import dataclass

BUSYBOX = "/bin/busybox"

# One shell loop, used both to calibrate on the host and inside the image (same busybox sh there).
_LOOP = "i=0; while [ $i -lt {count} ]; do i=$((i+1)); done"


# Issue 14's names for the cases.
ISSUE_NAMES = {"cold-20-run": "b1", "two-stages": "b2", "copy-cold": "b3", "cached-20-run": "b4",
               "copy-one-changed": "b5", "dd-cold": "b6", "push-dd": "b7", "save-dd": "b8"}


@dataclass(frozen=True)
class Sizes:
    """How big the generated data is: the issue's sizes, or a tiny set for testing the harness."""

    small_files: int = 5000
    small_bytes: tuple[int, int] = (1024, 4096)
    big_files: int = 20
    big_bytes: int = 10 << 20
    dd_megabytes: int = 300

    @classmethod
    def named(cls, name: str) -> "Sizes":
        if name == "tiny":
            return cls(small_files=30, small_bytes=(10, 100), big_files=2, big_bytes=64 << 10, dd_megabytes=1)
        return cls()


@dataclass(frozen=True)
class Scenario:
    name: str
    dockerfile: str
    cached: bool          # False: every timed build has --no-cache; True: timed rebuilds of a primed cache
    description: str
    network: str = "default"   # build-image's --network (BuildKit's runs always have --network=none)
    context: str = ""          # "files": the generated 5,000 files + 200 MB; "": the Dockerfile only
    change_one_file: bool = False   # before each timed build, rewrite one small context file
    tag: str | None = None     # -t NAME for the build
    step: str = "build"        # "build", or "push"/"save" of the image the build before it named

    @property
    def label(self) -> str:
        """The name with issue 14's name for the case (b1..b8) before it, where it has one."""
        issue = ISSUE_NAMES.get(self.name)
        return f"{issue} {self.name}" if issue else self.name


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


def copy_all(base: str) -> str:
    return f"FROM {base}\nCOPY . /app\n"


def write_dd(base: str, megabytes: int) -> str:
    """One RUN writing MEGABYTES of random data (incompressible, as the issue's b6)."""
    return f"FROM {base}\nRUN dd if=/dev/urandom of=/data bs=1048576 count={megabytes} 2>/dev/null\n"


DD_IMAGE = "bench-dd:latest"


def scenarios(base: str, loop_count: int, sizes: Sizes = Sizes()) -> list[Scenario]:
    """All timed cases, in the order they run. cold-1-run only serves the per-RUN overhead; push-dd
    and save-dd time the image that the build just before them named (dd-cold's)."""
    twenty = trivial_runs(base, 20)
    files = (f"{sizes.small_files} files of {sizes.small_bytes[0]}-{sizes.small_bytes[1]} B + "
             f"{sizes.big_files} of {_size_text(sizes.big_bytes)}, random")
    return [
        Scenario("cold-1-run", trivial_runs(base, 1), False, "FROM + 1 trivial RUN, --no-cache"),
        Scenario("cold-20-run", twenty, False, "FROM + 20 trivial RUNs, --no-cache (build-image: default network)"),
        Scenario("cold-20-run-none", trivial_runs(base, 20), False,
                 "the same, build-image with --network none", network="none"),
        Scenario("cached-20-run", twenty, True, "the same 20 RUNs, fully cached rebuild"),
        Scenario("two-stages", two_stages(base, loop_count), False,
                 "two independent ~1 s CPU stages + COPY --from both, --no-cache (build-image: default network)"),
        Scenario("two-stages-none", two_stages(base, loop_count), False,
                 "the same, build-image with --network none (as BuildKit's RUNs here: no bridge)", network="none"),
        Scenario("copy-cold", copy_all(base), False, f"COPY . /app of {files}, --no-cache, -t",
                 context="files", tag="bench-copy:latest"),
        Scenario("copy-one-changed", copy_all(base), True, "the same, after one small file changed, -t",
                 context="files", change_one_file=True, tag="bench-copy:latest"),
        Scenario("dd-cold", write_dd(base, sizes.dd_megabytes), False,
                 f"RUN dd writing {sizes.dd_megabytes} MB of random data, --no-cache, -t", tag=DD_IMAGE),
        Scenario("push-dd", "", False, "push of that image to a fresh local registry (gzip + upload)",
                 step="push"),
        Scenario("save-dd", "", False, "that image as an archive: build-image save --format oci, docker save",
                 step="save"),
    ]


def _size_text(size: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):g} {unit}"
    return f"{size} B"


def write_files_context(directory: str, dockerfile: str, sizes: Sizes) -> str:
    """The issue's COPY context: SIZES.small_files small files of random bytes in directories of
    100, and SIZES.big_files big ones; returns DIRECTORY."""
    write_context(directory, dockerfile)
    rng = random.Random(14)
    for i in range(sizes.small_files):
        sub = os.path.join(directory, "src", f"d{i // 100:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i:05d}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randint(*sizes.small_bytes)))
    os.makedirs(os.path.join(directory, "big"), exist_ok=True)
    for i in range(sizes.big_files):
        with open(os.path.join(directory, "big", f"blob{i:02d}.bin"), "wb") as f:
            f.write(os.urandom(sizes.big_bytes))
    return directory


def change_one_file(directory: str, serial: int) -> str:
    """Rewrite one small file of a files context with content no earlier call gave it; its path."""
    path = os.path.join(directory, "src", "d000", "f00000.txt")
    with open(path, "w") as f:
        f.write(f"changed for build {serial} at {time.time_ns()}\n")
    return path


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
