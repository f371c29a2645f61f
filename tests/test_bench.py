"""The benchmark harness itself: Dockerfiles, timing plumbing, the report, the private dockerd, and
whole runs with a stand-in build-image. Nothing here asserts how fast anything is.

    python -m pytest -n 2 tests/test_bench.py
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from bench import report
from bench.dockerd import DOCKER_CLIENT, DOCKERD, DockerdUnavailable, PrivateDockerd
from bench.measure import Series, measure, measure_image_steps
from bench.mounts import _unescape_mountinfo, mounts_under, unmount_under
from bench.scenarios import (BUSYBOX, DD_IMAGE, Scenario, Sizes, busy_loop, calibrate_loop, change_one_file,
                             scenarios, trivial_runs, two_stages, write_files_context)
from bench.signals import interrupts_held
from bench.tools import BuildImage, BuildOutcome, daemon_peak_rss, reset_peak_rss, run_timed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(REPO, "bench", "run.py")
SUCCEED = f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(0)'"
FAIL = f"{shlex.quote(sys.executable)} -c 'import sys; sys.stderr.write(\"boom\\\\n\" * 30); sys.exit(3)'"

needs_dockerd = pytest.mark.skipif(not (os.access(DOCKERD, os.X_OK) and os.access(DOCKER_CLIENT, os.X_OK)),
                                   reason="Debian's docker.io is not installed")


# -- scenarios -----------------------------------------------------------------------------------

def test_trivial_runs_has_one_distinct_run_per_step():
    text = trivial_runs("reg/busybox:latest", 20)
    lines = text.splitlines()
    assert lines[0] == "FROM reg/busybox:latest"
    runs = lines[1:]
    assert len(runs) == 20 and len(set(runs)) == 20
    assert runs[0] == "RUN echo 1 > /f1" and runs[-1] == "RUN echo 20 > /f20"


def test_no_dockerfile_has_a_syntax_line():
    for case in scenarios("reg/busybox:latest", 1000):
        assert "syntax" not in case.dockerfile.lower(), case.name
        if case.step == "build":
            assert case.dockerfile.startswith("FROM reg/busybox:latest")
        else:
            assert case.dockerfile == ""     # pushes and saves take the image the build before made


def test_two_stages_are_independent_and_distinct():
    text = two_stages("b:1", 1234)
    runs = [line for line in text.splitlines() if line.startswith("RUN")]
    assert len(runs) == 2 and runs[0] != runs[1]  # identical RUNs would be merged into one vertex
    assert all("1234" in run for run in runs)
    assert "COPY --from=left /left /left" in text and "COPY --from=right /right /right" in text
    assert text.count("FROM b:1") == 3


def test_scenarios_carry_the_issue_names_and_the_image_steps_follow_their_build():
    cases = scenarios("b:1", 10)
    labels = [case.label for case in cases]
    assert labels == ["cold-1-run", "b1 cold-20-run", "cold-20-run-none", "b4 cached-20-run", "b2 two-stages",
                      "two-stages-none", "b3 copy-cold", "b5 copy-one-changed", "b6 dd-cold", "b7 push-dd", "b8 save-dd"]
    by_name = {case.name: case for case in cases}
    assert by_name["dd-cold"].tag == DD_IMAGE and "count=300" in by_name["dd-cold"].dockerfile
    assert [c.step for c in cases[-3:]] == ["build", "push", "save"]
    assert by_name["copy-cold"].dockerfile.endswith("COPY . /app\n") and not by_name["copy-cold"].cached
    assert by_name["copy-one-changed"].cached and by_name["copy-one-changed"].change_one_file
    assert by_name["copy-one-changed"].context == by_name["copy-cold"].context == "files"


def test_tiny_sizes_shrink_everything():
    tiny = scenarios("b:1", 10, Sizes.named("tiny"))
    assert "count=1 " in next(c for c in tiny if c.name == "dd-cold").dockerfile
    assert Sizes.named("full") == Sizes() and Sizes().small_files == 5000 and Sizes().big_bytes == 10 << 20


def test_files_context_has_the_asked_sizes_and_one_file_changes(tmp_path):
    sizes = Sizes(small_files=250, small_bytes=(1024, 4096), big_files=3, big_bytes=100_000)
    root = write_files_context(str(tmp_path / "ctx"), "FROM b\nCOPY . /app\n", sizes)
    small = [os.path.join(d, f) for d, _, names in os.walk(os.path.join(root, "src")) for f in names]
    assert len(small) == 250 and len(os.listdir(os.path.join(root, "src"))) == 3
    assert all(1024 <= os.path.getsize(p) <= 4096 for p in small)
    big = sorted(os.listdir(os.path.join(root, "big")))
    assert big == ["blob00.bin", "blob01.bin", "blob02.bin"]
    assert all(os.path.getsize(os.path.join(root, "big", b)) == 100_000 for b in big)
    path = change_one_file(root, 1)
    first = open(path, "rb").read()
    change_one_file(root, 2)
    assert open(path, "rb").read() != first and path in small


def test_scenarios_cold_ones_disable_the_cache():
    cases = {case.name: case for case in scenarios("b:1", 10) if not case.context and case.step == "build"}
    assert set(cases) == {"cold-1-run", "cold-20-run", "cold-20-run-none", "cached-20-run", "two-stages",
                          "two-stages-none", "dd-cold"}
    assert cases["two-stages-none"].network == "none" and cases["two-stages"].network == "default"
    assert cases["cached-20-run"].cached and not cases["cold-20-run"].cached
    assert not cases["cold-20-run-none"].cached
    assert cases["cached-20-run"].dockerfile == cases["cold-20-run"].dockerfile
    assert cases["cold-20-run-none"].dockerfile == cases["cold-20-run"].dockerfile
    assert cases["cold-20-run-none"].network == "none" and cases["cold-20-run"].network == "default"


@pytest.mark.skipif(not os.access(BUSYBOX, os.X_OK), reason="busybox-static is not installed")
def test_busy_loop_counts_to_its_limit_in_busybox_sh():
    result = subprocess.run([BUSYBOX, "sh", "-c", busy_loop(250) + "; echo $i"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "250"


@pytest.mark.skipif(not os.access(BUSYBOX, os.X_OK), reason="busybox-static is not installed")
def test_calibrate_loop_gives_a_usable_count():
    count = calibrate_loop(0.05)
    assert isinstance(count, int) and count >= 1


# -- running a command ---------------------------------------------------------------------------

def test_run_timed_success():
    outcome = run_timed(shlex.split(SUCCEED))
    assert outcome.ok and outcome.error == "" and outcome.seconds > 0


def test_run_timed_reports_the_peak_rss_of_the_command():
    small = run_timed(shlex.split(SUCCEED))
    big = run_timed([sys.executable, "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"])
    assert big.ok and small.peak_rss is not None
    assert big.peak_rss >= 200 << 20 > small.peak_rss


def test_a_daemons_peak_rss_is_reset_and_read_through_proc():
    script = ("import sys, time\nb = bytearray(120 << 20)\nb[::4096] = b'x' * len(b[::4096])\n"
              "del b\nprint('ready', flush=True)\ntime.sleep(30)")
    daemon = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout.readline() == "ready\n"
        assert daemon_peak_rss(daemon.pid) >= 120 << 20
        reset_peak_rss(daemon.pid)
        assert daemon_peak_rss(daemon.pid) < 120 << 20   # the peak starts again at today's RSS
        outcome = run_timed(shlex.split(SUCCEED), daemon_pid=daemon.pid)
        assert outcome.peak_rss < 120 << 20
    finally:
        daemon.kill()
        daemon.wait()
    assert daemon_peak_rss(daemon.pid) is None


def test_run_timed_failure_keeps_the_last_twenty_lines_of_stderr():
    outcome = run_timed([sys.executable, "-c",
                         "import sys\nfor n in range(30): print('line', n, file=sys.stderr)\nsys.exit(4)"])
    assert not outcome.ok
    lines = outcome.error.splitlines()
    assert lines[0] == "line 10" and lines[19] == "line 29"
    assert lines[-1] == "(exit status 4)"


def test_run_timed_missing_command():
    outcome = run_timed(["/nonexistent/build-image", "."])
    assert not outcome.ok and "cannot run /nonexistent/build-image" in outcome.error


def test_run_timed_timeout_stops_the_command():
    outcome = run_timed([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert not outcome.ok and "timed out" in outcome.error


def test_run_timed_interrupted_stops_the_command_first(tmp_path):
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 2.0)
        with pytest.raises(KeyboardInterrupt):
            run_timed([sys.executable, "-c", script])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pid = int(pid_file.read_text())
    assert not os.path.exists(f"/proc/{pid}")      # stopped and reaped, not left running


def test_an_interrupt_taken_by_another_thread_waits_for_the_held_block_to_end():
    # The kernel gives a signal sent to the process to a thread that does not block it; Python
    # would then raise in the main thread at once, in the middle of the block (a Popen: a leak).
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    stop = threading.Event()
    bystander = threading.Thread(target=stop.wait)     # started outside the block: nothing blocked
    bystander.start()
    previous = signal.signal(signal.SIGTERM, interrupt)
    finished = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
                deadline = time.monotonic() + 0.5      # the other thread takes it meanwhile
                while time.monotonic() < deadline:
                    pass                               # bytecodes at which a handler would run
                finished.append(True)
    finally:
        stop.set()
        bystander.join()
        signal.signal(signal.SIGTERM, previous)
    assert finished == [True]
    assert signal.getsignal(signal.SIGTERM) is previous


def test_build_image_command_line(tmp_path):
    tool = BuildImage(["build-image", "--debug"], str(tmp_path / "store"))
    assert tool.argv("/ctx", no_cache=True) == [
        "build-image", "--debug", "--root", str(tmp_path / "store"), "--progress", "quiet", "--no-cache", "/ctx"]
    assert "--no-cache" not in tool.argv("/ctx", no_cache=False)
    assert tool.argv("/ctx", no_cache=False, tag="app:1")[-3:] == ["-t", "app:1", "/ctx"]


def test_build_image_push_and_save_command_lines(tmp_path):
    tool = BuildImage([sys.executable, "-c", "import sys; print(sys.argv[1:], file=sys.stderr); sys.exit(1)"],
                      str(tmp_path / "store"))
    root = str(tmp_path / "store")
    assert f"['push', '--root', '{root}', '-q', 'reg/app:1']" in tool.push("reg/app:1").error
    assert f"['save', '--root', '{root}', '--format', 'oci', '-o', '/o.tar', 'app']" in tool.save("app", "/o.tar").error
    assert f"['tag', '--root', '{root}', 'app', 'reg/app:1']" in tool.tag("app", "reg/app:1").error


# -- measuring -----------------------------------------------------------------------------------

class ScriptedTool:
    """A BuildTool whose builds take the given times, or fail at a given call."""

    def __init__(self, name: str, seconds: list[float], fail_at: int | None = None):
        self.name = name
        self.seconds = list(seconds)
        self.fail_at = fail_at
        self.calls: list[bool] = []     # no_cache per call
        self.log: list[tuple] = []      # every call, in order

    def prepare(self, base, context):
        return BuildOutcome(0.0, True)

    def _outcome(self) -> BuildOutcome:
        if self.fail_at is not None and len(self.log) - 1 == self.fail_at:
            return BuildOutcome(0.1, False, "it broke")
        return BuildOutcome(self.seconds.pop(0), True, peak_rss=len(self.log) << 20)

    def build(self, context, *, no_cache, network="default", tag=None):
        self.calls.append(no_cache)
        self.log.append(("build", tag))
        return self._outcome()

    def tag(self, image, name):
        self.log.append(("tag", image, name))
        return BuildOutcome(0.0, True)

    def push(self, name):
        self.log.append(("push", name))
        return self._outcome()

    def save(self, image, dest):
        self.log.append(("save", image, os.path.exists(os.path.dirname(dest))))
        open(dest, "wb").close()
        return self._outcome()


def test_measure_cold_interleaves_tools_and_disables_the_cache():
    order = []
    a, b = ScriptedTool("a", [3, 1, 2]), ScriptedTool("b", [5, 6, 4])
    series = measure(Scenario("cold", "", False, ""), [a, b], "/ctx", 3,
                     lambda scenario, tool, index, outcome: order.append((tool, index)))
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert a.calls == [True] * 3 and b.calls == [True] * 3
    assert series["a"].seconds == (3, 1, 2) and series["a"].median == 2
    assert (series["b"].min, series["b"].median, series["b"].max) == (4, 5, 6)


def test_measure_cached_primes_once_untimed():
    primed = []
    tool = ScriptedTool("a", [9, 1, 1])
    series = measure(Scenario("warm", "", True, ""), [tool], "/ctx", 2,
                     lambda scenario, name, index, outcome: primed.append(index))
    assert primed == [None, 0, 1]
    assert tool.calls == [False, False, False]
    assert series["a"].seconds == (1, 1)


def test_measure_runs_the_hook_before_every_timed_build():
    changes = []
    tool = ScriptedTool("a", [1, 1, 1])
    measure(Scenario("changed", "", True, ""), [tool], "/ctx", 2, before_build=lambda: changes.append(len(tool.calls)))
    assert changes == [1, 2]          # not before the untimed priming build


def test_image_steps_push_each_fresh_build_to_its_own_registry():
    registries = []

    import contextlib

    @contextlib.contextmanager
    def fresh_registry():
        registries.append(f"127.0.0.1:{5100 + len(registries)}")
        yield registries[-1]

    build, push, save = (c for c in scenarios("b:1", 1) if c.name in ("dd-cold", "push-dd", "save-dd"))
    tool = ScriptedTool("a", [3, 2, 1, 3, 2, 1])
    series = measure_image_steps(build, [push, save], [tool], "/ctx", 2, fresh_registry)
    assert tool.log == [
        ("build", DD_IMAGE), ("tag", DD_IMAGE, "127.0.0.1:5100/bench-dd:0"), ("push", "127.0.0.1:5100/bench-dd:0"),
        ("save", DD_IMAGE, True),
        ("build", DD_IMAGE), ("tag", DD_IMAGE, "127.0.0.1:5101/bench-dd:1"), ("push", "127.0.0.1:5101/bench-dd:1"),
        ("save", DD_IMAGE, True)]
    assert tool.calls == [True, True]                # the builds are cold
    assert series["push-dd"]["a"].seconds == (2, 2) and series["save-dd"]["a"].seconds == (1, 1)
    assert series["dd-cold"]["a"].peak_rss == (1 << 20, 5 << 20)


def test_image_steps_of_a_failed_build_are_failed_too():
    build, push, save = (c for c in scenarios("b:1", 1) if c.name in ("dd-cold", "push-dd", "save-dd"))
    tool = ScriptedTool("a", [1, 1, 1], fail_at=0)
    series = measure_image_steps(build, [push, save], [tool], "/ctx", 2, lambda: None)
    assert not series["dd-cold"]["a"].ok and not series["push-dd"]["a"].ok and not series["save-dd"]["a"].ok
    assert tool.log == [("build", DD_IMAGE)]


def test_measure_stops_asking_a_tool_that_failed():
    broken, fine = ScriptedTool("broken", [1, 1, 1], fail_at=1), ScriptedTool("fine", [1, 1, 1])
    series = measure(Scenario("cold", "", False, ""), [broken, fine], "/ctx", 3)
    assert len(broken.calls) == 2 and len(fine.calls) == 3
    assert not series["broken"].ok and series["broken"].error == "it broke"
    assert series["fine"].ok


# -- the report ----------------------------------------------------------------------------------

def _series(tool: str, scenario: str, *seconds: float, error: str = "") -> Series:
    return Series(tool, scenario, tuple(seconds), error)


def _results(build_image: dict[str, tuple], buildkit: dict[str, tuple]) -> dict:
    results: dict = {}
    for tool, values in (("build-image", build_image), ("buildkit", buildkit)):
        for scenario, seconds in values.items():
            results.setdefault(scenario, {})[tool] = _series(tool, scenario, *seconds)
    return results


def test_per_run_overhead_is_the_difference_of_medians_over_nineteen():
    results = _results({"cold-1-run": (0.3, 0.2, 0.4), "cold-20-run": (2.2, 2.2, 9.0)}, {})
    assert report.per_run_overhead(results, "build-image") == pytest.approx((2.2 - 0.3) / 19)
    assert report.per_run_overhead(results, "buildkit") is None


def test_rows_ratios_targets_and_verdicts():
    results = _results(
        {"cold-1-run": (0.2,), "cold-20-run": (1.15,), "cached-20-run": (0.2,), "two-stages": (1.0,)},
        {"cold-1-run": (0.3,), "cold-20-run": (2.2,), "cached-20-run": (0.1,), "two-stages": (2.0,)})
    rows = {row.label: row for row in report.build_rows(results)}
    assert list(rows) == ["cold-1-run", "cold-20-run", "per-RUN overhead", "cached-20-run", "two-stages"]
    assert [row.title for row in rows.values()] == [
        "cold-1-run", "b1 cold-20-run", "per-RUN overhead", "b4 cached-20-run", "b2 two-stages"]
    overhead = rows["per-RUN overhead"]
    assert overhead.ratio == pytest.approx(0.05 / 0.1)
    assert overhead.target == 0.5 and overhead.verdict == "PASS"
    assert rows["cached-20-run"].ratio == pytest.approx(2.0) and rows["cached-20-run"].verdict == "FAIL"
    assert rows["two-stages"].verdict == "PASS"
    assert rows["cold-20-run"].target == 0.5 and rows["cold-20-run"].verdict == "FAIL"  # 1.15 / 2.2


def test_rows_mark_failed_and_unavailable_tools():
    results = _results({"cold-1-run": (0.2,), "cold-20-run": (1.0,)}, {})
    results["cached-20-run"] = {"build-image": _series("build-image", "cached-20-run", error="boom")}
    rows = {row.label: row for row in report.build_rows(results, buildkit_available=False)}
    assert rows["cached-20-run"].build_image.problem == "failed"
    assert rows["cached-20-run"].buildkit.problem == "unavailable"
    assert rows["cached-20-run"].ratio is None and rows["cached-20-run"].verdict == "n/a"
    assert rows["per-RUN overhead"].build_image.stat is not None
    assert rows["per-RUN overhead"].buildkit.problem == "unavailable"


def test_table_shows_medians_ranges_ratios_and_marks():
    results = _results({"cached-20-run": (0.3, 0.1, 0.2)}, {"cached-20-run": (0.4, 0.4, 0.4)})
    table = report.format_table(report.build_rows(results))
    header, rule, row = table.splitlines()
    assert header.startswith("scenario") and set(rule) == {"-"}
    assert "0.200 s [0.100-0.300]" in row and "0.400 s [0.400-0.400]" in row
    assert "0.50x" in row and "<= 1x" in row and "PASS" in row


def test_ratio_ranges_pair_the_runs_of_each_repeat():
    results = _results({"copy-cold": (1.0, 2.0, 3.0)}, {"copy-cold": (2.0, 2.0, 2.0)})
    row = report.build_rows(results)[0]
    assert row.title == "b3 copy-cold" and row.target == 0.67
    assert row.ratio == pytest.approx(1.0) and row.ratio_range == pytest.approx((0.5, 1.5))
    uneven = _results({"copy-cold": (1.0, 2.0)}, {"copy-cold": (2.0, 4.0, 3.0)})
    assert report.build_rows(uneven)[0].ratio_range == pytest.approx((0.25, 1.0))


def test_table_shows_issue_names_and_peak_rss():
    results = {"dd-cold": {"build-image": Series("build-image", "dd-cold", (1.0,), "", (100 << 20, 120 << 20)),
                           "buildkit": Series("buildkit", "dd-cold", (2.0,), "", (300 << 20,))}}
    table = report.format_table(report.build_rows(results))
    row = table.splitlines()[2]
    assert row.startswith("b6 dd-cold") and row.endswith("120 / 300") and "0.50x [0.50-0.50]" in row
    data = report.to_json(results, report.build_rows(results), {}, {})
    assert data["rows"][0]["build_image_peak_rss_bytes"] == 120 << 20 and data["rows"][0]["issue"] == "b6"
    assert data["runs"]["dd-cold"]["buildkit"]["peak_rss_bytes"] == [300 << 20]


def test_json_holds_every_timed_run():
    results = _results({"cold-1-run": (0.2, 0.3), "cold-20-run": (1.0, 1.1)}, {"cold-1-run": (0.3,)})
    rows = report.build_rows(results)
    data = json.loads(json.dumps(report.to_json(results, rows, {"nproc": "2"}, {"repeat": 2})))
    assert data["runs"]["cold-1-run"]["build-image"]["seconds"] == [0.2, 0.3]
    assert data["runs"]["cold-1-run"]["buildkit"]["ok"] is True
    assert data["per_run_overhead_seconds"]["build-image"] == pytest.approx((1.05 - 0.25) / 19)
    assert data["machine"] == {"nproc": "2"} and data["settings"] == {"repeat": 2}


# -- mounts --------------------------------------------------------------------------------------

def test_mountinfo_escapes_are_decoded():
    assert _unescape_mountinfo(r"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"
    assert _unescape_mountinfo("/plain/path") == "/plain/path"


@pytest.mark.root
def test_unmount_under_takes_down_nested_mounts(tmp_path):
    outer = tmp_path / "with space"
    inner = outer / "inner"
    outer.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(outer)], check=True)
    try:
        inner.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(inner)], check=True)
        assert mounts_under(str(tmp_path)) == [str(inner), str(outer)]
        assert unmount_under(str(tmp_path)) == [str(inner), str(outer)]
        assert mounts_under(str(tmp_path)) == []
    finally:
        for point in mounts_under(str(tmp_path)):
            subprocess.run(["umount", "-l", point])


# -- the private dockerd -------------------------------------------------------------------------

def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid} (gone)"


@pytest.mark.root
@pytest.mark.docker
@needs_dockerd
def test_private_dockerd_answers_and_leaves_nothing_behind():
    with PrivateDockerd() as daemon:
        data_root, exec_root = daemon.data_root, daemon.exec_root
        info = subprocess.run(daemon.command("info", "--format", "{{.DockerRootDir}}"),
                              env=daemon.env, capture_output=True, text=True)
        assert info.returncode == 0 and info.stdout.strip() == data_root
        assert daemon.server_version().startswith("20.10")
        assert daemon.env["DOCKER_BUILDKIT"] == "1"
    assert not os.path.exists(data_root) and not os.path.exists(exec_root)
    assert mounts_under(data_root) == [] and mounts_under(exec_root) == []
    assert _processes_mentioning(exec_root) == []


@pytest.mark.root
@pytest.mark.docker
@needs_dockerd
def test_private_dockerd_stop_cleans_up_after_a_killed_daemon():
    daemon = PrivateDockerd()
    try:
        daemon.start()
        exec_root = daemon.exec_root
        os.kill(daemon.pid, signal.SIGKILL)      # its containerd and mounts are now orphans
    finally:
        daemon.stop()
    assert _processes_mentioning(exec_root) == []
    assert mounts_under(exec_root) == [] and not os.path.exists(exec_root)


def test_private_dockerd_that_cannot_start_says_why(tmp_path):
    with pytest.raises(DockerdUnavailable, match="exited with status 1"):
        with PrivateDockerd(dockerd="/bin/false"):
            pass


def test_missing_dockerd_is_reported():
    with pytest.raises(DockerdUnavailable, match="not found"):
        with PrivateDockerd(dockerd="/nonexistent/dockerd"):
            pass


# -- whole runs ----------------------------------------------------------------------------------

def _run_bench(tmp_path, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, RUN_PY, "--json", str(out), *args], capture_output=True,
                            text=True, timeout=timeout)
    data = json.loads(out.read_text()) if out.exists() else {}
    return result, data


@pytest.mark.registry
@pytest.mark.tools
def test_run_with_a_stand_in_build_image_only(tmp_path):
    result, data = _run_bench(tmp_path, "--repeat", "2", "--skip-buildkit", "--size", "tiny",
                              "--build-image", SUCCEED)
    assert result.returncode == 0, result.stderr
    assert data["runs"]["cold-20-run"]["build-image"]["ok"] is True
    assert len(data["runs"]["two-stages"]["build-image"]["seconds"]) == 2
    assert "buildkit" not in data["runs"]["two-stages"]
    assert "per-RUN overhead" in result.stdout and "unavailable" in result.stdout
    for issue in ("b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"):
        assert f"\n{issue} " in result.stdout
    assert all(len(run["build-image"]["seconds"]) == 2 for run in data["runs"].values())
    assert data["runs"]["push-dd"]["build-image"]["peak_rss_bytes"][0] > 0


@pytest.mark.registry
@pytest.mark.tools
def test_only_runs_the_cases_asked_and_their_build(tmp_path):
    result, data = _run_bench(tmp_path, "--repeat", "1", "--skip-buildkit", "--size", "tiny",
                              "--only", "b5,push-dd", "--build-image", SUCCEED)
    assert result.returncode == 0, result.stderr
    assert set(data["runs"]) == {"copy-one-changed", "dd-cold", "push-dd"}
    assert data["settings"]["size"] == "tiny"


def test_only_refuses_an_unknown_case(tmp_path):
    result, _ = _run_bench(tmp_path, "--only", "b9", "--skip-buildkit")
    assert result.returncode == 2 and "unknown scenario 'b9'" in result.stderr


@pytest.mark.registry
@pytest.mark.tools
def test_failing_build_image_marks_rows_failed_and_shows_stderr(tmp_path):
    result, data = _run_bench(tmp_path, "--repeat", "2", "--skip-buildkit", "--size", "tiny", "--build-image", FAIL)
    assert result.returncode == 0, result.stderr
    assert all(not run["build-image"]["ok"] for run in data["runs"].values())
    assert "boom" in data["runs"]["two-stages"]["build-image"]["error"]
    assert "FAILED" in result.stdout
    # Each failure prints at most the last 20 lines of the command's stderr, plus the exit status.
    assert "(exit status 3)" in result.stderr and "boom" in result.stderr


@pytest.mark.root
@pytest.mark.registry
@pytest.mark.tools
@pytest.mark.docker
@needs_dockerd
def test_run_times_buildkit_for_real(tmp_path):
    result, data = _run_bench(tmp_path, "--repeat", "1", "--size", "tiny", "--build-image", SUCCEED)
    assert result.returncode == 0, result.stderr
    for scenario in ("cold-1-run", "cold-20-run", "cached-20-run", "two-stages", "copy-cold", "copy-one-changed",
                     "dd-cold", "push-dd", "save-dd"):
        assert data["runs"][scenario]["buildkit"]["ok"] is True, data["runs"][scenario]
    # dockerd does the work: its peak RSS is more than a docker client's alone would be
    assert data["runs"]["dd-cold"]["buildkit"]["peak_rss_bytes"][0] > 20 << 20
    assert data["per_run_overhead_seconds"]["buildkit"] is not None
    assert data["machine"]["docker"].startswith("dockerd 20.10")
    verdicts = {row["scenario"]: row["verdict"] for row in data["rows"]}
    assert verdicts["cached-20-run"] in ("PASS", "FAIL") and verdicts["cold-20-run"] in ("PASS", "FAIL")
    assert verdicts["cold-1-run"] is None


@pytest.mark.root
@pytest.mark.registry
@pytest.mark.tools
@pytest.mark.docker
@needs_dockerd
def test_sigterm_stops_dockerd_and_removes_everything():
    # A short private TMPDIR: every temp dir the run makes (registry, store, dockerd) lands in it.
    tmp = tempfile.mkdtemp(prefix="bt-", dir="/tmp")
    try:
        # Its untimed first build passes; the first timed one (--no-cache) hangs until stopped.
        sleeper = (f"{shlex.quote(sys.executable)} -c "
                   "'import sys, time; \"--no-cache\" in sys.argv and time.sleep(120)'")
        proc = subprocess.Popen([sys.executable, RUN_PY, "--repeat", "1", "--build-image", sleeper],
                                env=dict(os.environ, TMPDIR=tmp), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            seen = ""
            while "cold-1-run:" not in seen and time.monotonic() < deadline:  # dockerd is up by then
                line = proc.stderr.readline()
                if not line:
                    break
                seen += line
            assert "cold-1-run:" in seen, seen
            assert _processes_mentioning(tmp) != []
            proc.send_signal(signal.SIGTERM)
            _, rest = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, seen + rest
        assert os.listdir(tmp) == []
        left = _processes_mentioning(tmp)
        assert left == [], [_cmdline(pid) for pid in left]
        assert mounts_under(tmp) == []
    finally:
        unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
