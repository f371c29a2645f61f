"""Server columns: the same scenarios built through a warm `build-image serve` (the client is a
fresh `build-image --server unix://...` process each time, as a user runs it; the server keeps its
modules imported and its store open), beside build-image alone and BuildKit through dockerd.

    python3 bench/server.py [--repeat N] [--json FILE]     # b1, b2 and b4 (below), all three tools
    python3 bench/run.py --server                          # the same columns after the main table

b1 is cold-20-run (--no-cache), b2 two-stages (two ~1 s CPU stages at once), b4 cached-20-run (a
fully cached rebuild); the target for b4 through the server is at most 0.5x BuildKit's cached
rebuild through dockerd.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.measure import Series, measure                 # noqa: E402
from bench.signals import interrupts_held, restore_mask    # noqa: E402
from bench.tools import BuildOutcome, run_timed           # noqa: E402

SERVER_SCENARIOS = {"b1": "cold-20-run", "b2": "two-stages", "b4": "cached-20-run"}  # the issues' names
SERVER_TARGETS = {"b4": 0.5}
_LISTENING = re.compile(r"listening on (unix://\S+)")


class BuildImageServer:
    """A private `build-image serve` on a unix socket with its own store; each timed build is a
    new client process."""

    name = "build-image-server"

    def __init__(self, command, work: str):
        self.command = list(command)
        self.work = work
        self.root = os.path.join(work, "server-store")
        self.log_path = os.path.join(work, "server.log")
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def __enter__(self) -> "BuildImageServer":
        log = open(self.log_path, "w")
        with interrupts_held() as mask:
            self.proc = subprocess.Popen([*self.command, "serve", "--root", self.root, "--listen",
                                          f"unix://{self.work}/serve.sock"], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, preexec_fn=restore_mask(mask))
        log.close()
        try:
            self._wait_for_address(deadline=time.monotonic() + 60)
        except BaseException:             # an interrupt: __exit__ is not called for a failed __enter__
            self.__exit__()
            raise
        if not self.address:
            self.__exit__()
            with open(self.log_path) as f:
                raise RuntimeError(f"build-image serve did not start:\n{f.read()[-2000:]}")
        return self

    def _wait_for_address(self, deadline: float) -> None:
        while time.monotonic() < deadline and not self.address:
            with open(self.log_path) as f:
                found = _LISTENING.search(f.read())
            if found:
                self.address = found.group(1)
            elif self.proc.poll() is not None:
                break
            else:
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def argv(self, context: str, *, no_cache: bool, network: str = "default", tag: str | None = None) -> list[str]:
        return [*self.command, "--server", self.address, "build", "--progress", "quiet",
                *(["--no-cache"] if no_cache else []), *(["--network", network] if network != "default" else []),
                *(["-t", tag] if tag else []), context]

    def prepare(self, base: str, context: str) -> BuildOutcome:
        return run_timed(self.argv(context, no_cache=False))

    def build(self, context: str, *, no_cache: bool, network: str = "default",
              tag: str | None = None) -> BuildOutcome:
        return run_timed(self.argv(context, no_cache=no_cache, network=network, tag=tag))


def server_table(results) -> tuple[str, list[dict]]:
    """The b1/b2/b4 rows: each tool's median, and the server's ratio to BuildKit against its target."""
    rows, lines = [], []
    header = f"{'':4} {'scenario':<15} {'build-image':>12} {'server':>10} {'buildkit':>10} {'server/bk':>10} target"
    lines.append(header)
    for label, scenario in SERVER_SCENARIOS.items():
        series = results.get(scenario, {})

        def median(tool: str) -> float | None:
            found: Series | None = series.get(tool)
            return found.median if found is not None and found.ok else None

        alone, server, buildkit = median("build-image"), median(BuildImageServer.name), median("buildkit")
        ratio = server / buildkit if server is not None and buildkit else None
        target = SERVER_TARGETS.get(label)
        verdict = "" if target is None else ("n/a" if ratio is None else "PASS" if ratio <= target else "FAIL")
        show = lambda v: "-" if v is None else f"{v:.3f}s"   # noqa: E731
        lines.append(f"{label:4} {scenario:<15} {show(alone):>12} {show(server):>10} {show(buildkit):>10} "
                     f"{'-' if ratio is None else f'{ratio:.2f}x':>10} "
                     f"{'' if target is None else f'<= {target}x {verdict}'}")
        rows.append({"label": label, "scenario": scenario, "build_image": alone, "server": server,
                     "buildkit": buildkit, "ratio": ratio, "target": target, "verdict": verdict})
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    from bench.dockerd import PrivateDockerd
    from bench.mounts import unmount_under
    from bench.run import default_build_image_command, log
    from bench.scenarios import calibrate_loop, scenarios, write_context
    from bench.tools import BuildImage, BuildKit
    from tests.support.baseimage import push_busybox_image
    from tests.support.registry import Registry

    p = argparse.ArgumentParser(prog="bench/server.py", description=__doc__.strip().splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--build-image", default=default_build_image_command(), metavar="CMD")
    p.add_argument("--json", metavar="FILE")
    ns = p.parse_args(argv)
    results: dict[str, dict[str, Series]] = {}
    with contextlib.ExitStack() as stack:
        work = tempfile.mkdtemp(prefix="bench-server-")
        stack.callback(shutil.rmtree, work, True)
        stack.callback(unmount_under, work)
        registry = stack.enter_context(Registry())
        push_busybox_image(registry.host)
        base = f"{registry.host}/busybox:latest"
        cases = [c for c in scenarios(base, calibrate_loop(1.0)) if c.name in SERVER_SCENARIOS.values()]
        contexts = {c.name: write_context(os.path.join(work, c.name), c.dockerfile) for c in cases}
        command = shlex.split(ns.build_image)
        alone = BuildImage(command, os.path.join(work, "store"))
        server = stack.enter_context(BuildImageServer(command, work))
        daemon = stack.enter_context(PrivateDockerd())
        tools = [alone, server, BuildKit(daemon)]
        for tool in tools:
            warm = tool.prepare(base, contexts["cold-20-run"])
            if not warm.ok:
                log(f"{tool.name}: the untimed first build failed:\n{warm.error}")
        for case in cases:
            log(f"{case.name}: {case.description}")
            results[case.name] = measure(case, tools, contexts[case.name], ns.repeat,
                                         lambda s, t, i, o: log(f"  {s:<14} {t:<18} {i} {o.seconds:7.3f} s"
                                                                + ("" if o.ok else f" FAILED\n{o.error}")))
    table, rows = server_table(results)
    print(table)
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"rows": rows, "runs": {s: {t: list(v.seconds) for t, v in by.items()}
                                              for s, by in results.items()}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
