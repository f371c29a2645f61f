"""Time the same Dockerfiles with build-image and with BuildKit on this machine, and compare.

    python3 bench/run.py [--repeat N] [--only CASES] [--size full|tiny] [--build-image CMD]
                         [--json FILE] [--skip-buildkit]

Scenarios (see bench/README.md), with issue 14's names: cold-20-run (b1) and cold-1-run
(--no-cache; their difference / 19 is the per-RUN overhead), two-stages (b2: two independent ~1 s
CPU stages), cached-20-run (b4: a fully cached rebuild), copy-cold (b3: COPY of 5,000 small files
and 200 MB), copy-one-changed (b5: the same after one small file changed), dd-cold (b6: a RUN
writing 300 MB), push-dd (b7: push of that image to a fresh registry) and save-dd (b8: that image
as an archive). Both tools build FROM a busybox image in a private local registry; BuildKit runs
in a private dockerd. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench import report                                           # noqa: E402
from bench.dockerd import DockerdUnavailable, PrivateDockerd        # noqa: E402
from bench.measure import Series, measure                           # noqa: E402
from bench.mounts import unmount_under                              # noqa: E402
from bench.measure import measure_image_steps                      # noqa: E402
from bench.scenarios import (ISSUE_NAMES, Sizes, calibrate_loop, change_one_file, scenarios,  # noqa: E402
                             time_loop, trivial_runs, write_context, write_files_context)
from bench.tools import BuildImage, BuildKit, BuildOutcome          # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def indent(text: str) -> str:
    return "\n".join("    | " + line for line in text.splitlines())


def default_build_image_command() -> str:
    """The console script beside this interpreter: calling it directly skips the pyenv shim on PATH
    (a bash script that costs about 65 ms a call here), which would be charged to build-image."""
    beside = os.path.join(os.path.dirname(sys.executable), "build-image")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("build-image") or "build-image"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.strip().splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="timed builds per scenario and tool (default 5)")
    p.add_argument("--build-image", metavar="CMD",
                   help="build-image command line, split like a shell would (default: a regular install "
                        "of this checkout in its own venv, as users install it: bench/install.py)")
    p.add_argument("--json", metavar="FILE", help="also write the raw numbers to FILE")
    p.add_argument("--skip-buildkit", action="store_true", help="time build-image only (no dockerd)")
    p.add_argument("--only", metavar="CASES", default="",
                   help="comma-separated scenarios to run, by name or issue name (b3,copy-one-changed); "
                        "push-dd and save-dd bring dd-cold with them (default: all)")
    p.add_argument("--size", choices=("full", "tiny"), default="full",
                   help="tiny: a few small files and 1 MB instead of the issue's sizes (to test the harness)")
    p.add_argument("--server", action="store_true", help="also time builds through a warm `build-image serve` "
                   "(bench/server.py: the b1, b2, b4 columns)")
    ns = p.parse_args(argv)
    if ns.repeat < 1:
        p.error("--repeat must be at least 1")
    known = {case.name for case in scenarios("b", 1)}
    by_issue = {issue: name for name, issue in ISSUE_NAMES.items()}
    wanted = set()
    for word in filter(None, (w.strip() for w in ns.only.split(","))):
        name = by_issue.get(word, word)
        if name not in known:
            p.error(f"--only: unknown scenario {word!r} (one of {', '.join(sorted(known | set(by_issue)))})")
        wanted.add(name)
    if wanted & {"push-dd", "save-dd"}:
        wanted.add("dd-cold")
    ns.only = wanted
    return ns


def compile_bytecode() -> str:
    """Compile build-image's modules as .ci/setup does: with PYTHONDONTWRITEBYTECODE set (as on
    these machines) a module edited since would be compiled again by every timed run (0.2-0.5 s)."""
    import compileall
    import importlib.util

    folders = []
    for package in ("builder", "builder.grammar", "builder.cache"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            folders.extend(spec.submodule_search_locations)
    ok = all(compileall.compile_dir(folder, quiet=1) for folder in dict.fromkeys(folders))
    return f"compiled ({', '.join(dict.fromkeys(folders))})" if ok and folders else "could not be compiled"


def machine_facts(build_image_command: str) -> dict[str, str]:
    facts = {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "build-image": build_image_command,
    }
    return facts


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _report_outcome(scenario: str, tool: str, index: int | None, outcome: BuildOutcome, repeat: int) -> None:
    which = "prime" if index is None else f"{index + 1}/{repeat}"
    if outcome.ok:
        log(f"  {scenario:<16} {tool:<12} {which:<6} {outcome.seconds:7.3f} s"
            + (f"  peak RSS {outcome.peak_rss / (1 << 20):.0f} MiB" if outcome.peak_rss else "")
            + (f"  (+{outcome.afterwards:.3f} s deleting after it returned, untimed)"
               if outcome.afterwards >= 0.005 else ""))
    else:
        log(f"  {scenario:<16} {tool:<12} {which:<6} FAILED after {outcome.seconds:.3f} s; "
            f"last lines of stderr:\n{indent(outcome.error)}")


def run(ns: argparse.Namespace) -> int:
    installed = "given by --build-image"
    if ns.build_image is None:
        from bench.install import user_install

        ns.build_image = user_install(log)
        installed = "a regular install of this checkout in its own venv (bench/install.py)"
        if ns.build_image is None:
            ns.build_image = default_build_image_command()
            installed = "the checkout's own install (the venv could not be made)"
    facts = machine_facts(ns.build_image)
    facts["installed as"] = installed
    facts["bytecode"] = compile_bytecode()
    log("calibrating the CPU loop (busybox sh on the host)...")
    loop_count = calibrate_loop(1.0)
    loop_seconds = time_loop(loop_count)
    facts["cpu loop"] = f"{loop_count} iterations = {loop_seconds:.2f} s in busybox sh on the host"

    from tests.support.baseimage import push_busybox_image
    from tests.support.registry import Registry

    results: dict[str, dict[str, Series]] = {}
    with contextlib.ExitStack() as stack:
        work = tempfile.mkdtemp(prefix="bench-run-")
        stack.callback(shutil.rmtree, work, True)
        stack.callback(unmount_under, work)       # runs first: nothing mounted may be left in it

        registry = stack.enter_context(Registry())
        push_busybox_image(registry.host)
        base = f"{registry.host}/busybox:latest"
        log(f"base image: {base}")

        sizes = Sizes.named(ns.size)
        cases = [case for case in scenarios(base, loop_count, sizes) if not ns.only or case.name in ns.only]
        contexts = {}
        for case in cases:
            if case.context == "files":   # one generated context for every case that COPYs it
                if "files" not in contexts:
                    log(f"writing the COPY context ({case.description.split(',')[0]})...")
                    contexts["files"] = write_files_context(os.path.join(work, "files"), case.dockerfile, sizes)
                contexts[case.name] = contexts["files"]
            elif case.step == "build":
                contexts[case.name] = write_context(os.path.join(work, case.name), case.dockerfile)
        warmup_context = write_context(os.path.join(work, "warm-up"), trivial_runs(base, 1))

        tools = []
        served_cases: set[str] = set()
        build_image = BuildImage(shlex.split(ns.build_image), os.path.join(work, "store"))
        log("build-image: untimed first build (fetches the base)...")
        warm = build_image.prepare(base, warmup_context)
        if not warm.ok:
            log(f"build-image: the untimed first build failed; timed runs will be tried anyway:\n"
                f"{indent(warm.error)}")
        tools.append(build_image)
        if ns.server:
            from bench.server import SERVER_SCENARIOS, BuildImageServer

            served_cases = set(SERVER_SCENARIOS.values())

            served = stack.enter_context(BuildImageServer(shlex.split(ns.build_image), work))
            served.prepare(base, warmup_context)
            tools.append(served)

        buildkit_available = False
        if ns.skip_buildkit:
            facts["docker"] = "skipped (--skip-buildkit)"
        else:
            try:
                log("starting a private dockerd...")
                daemon = stack.enter_context(PrivateDockerd())
                version = daemon.server_version()
                facts["docker"] = f"dockerd {version} ({daemon.client})"
                facts["buildkit"] = f"the BuildKit built into dockerd {version}"
                log("buildkit: docker pull + untimed first build...")
                warm = BuildKit(daemon).prepare(base, warmup_context)
                if warm.ok:
                    tools.append(BuildKit(daemon))
                    buildkit_available = True
                else:
                    facts["docker"] += "; its first build failed, BuildKit not timed"
                    log(f"buildkit: the untimed first build failed, BuildKit is not timed:\n{indent(warm.error)}")
            except DockerdUnavailable as error:
                facts["docker"] = "unavailable: dockerd did not start"
                log(f"dockerd is unavailable, timing build-image only:\n{indent(str(error))}")

        on_outcome = lambda s, t, i, o: _report_outcome(s, t, i, o, ns.repeat)  # noqa: E731
        changes = iter(range(1, 1 << 30))
        for position, case in enumerate(cases):
            if case.step != "build":
                continue                  # measured with the build before it
            steps = []
            for later in cases[position + 1:]:
                if later.step == "build":
                    break
                steps.append(later)
            for each in (case, *steps):
                log(f"{each.label}: {each.description}")
            if steps:
                results.update(measure_image_steps(case, steps, [t for t in tools if t.name != "build-image-server"],
                                                   contexts[case.name], ns.repeat,
                                                   lambda: _fresh_registry(Registry), on_outcome))
                continue
            context = contexts[case.name]
            before = (lambda c=context: change_one_file(c, next(changes))) if case.change_one_file else None
            # The server columns are b1, b2 and b4's (bench/server.py); other cases time the two tools.
            timed = [t for t in tools if t.name != "build-image-server" or case.name in served_cases]
            results[case.name] = measure(case, timed, context, ns.repeat, on_outcome, before)

    rows = report.build_rows(results, buildkit_available=buildkit_available)
    print(report.format_facts(facts))
    print()
    print(report.format_table(rows))
    if ns.server:
        from bench.server import server_table

        print("\n" + server_table(results)[0])
    if ns.json:
        settings = {"repeat": ns.repeat, "loop_count": loop_count, "build_image_command": ns.build_image,
                    "size": ns.size, "targets": report.TARGETS}
        with open(ns.json, "w") as f:
            json.dump(report.to_json(results, rows, facts, settings), f, indent=2)
            f.write("\n")
        log(f"raw numbers written to {ns.json}")
    return 0


@contextlib.contextmanager
def _fresh_registry(registry_class):
    """An empty registry for one push; its host."""
    with registry_class() as registry:
        yield registry.host


def _interrupt(signum, frame) -> None:
    """SIGTERM cleans up (dockerd, registry, temp dirs) the way Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        status = run(ns)
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped and removed")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    log(f"benchmark took {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
