"""Benchmark harness: build-image against BuildKit (Docker 20.10's) on this machine.

    python3 bench/run.py [--repeat N] [--build-image CMD] [--json FILE]

Modules:
    dockerd.py     a private, throw-away dockerd (its own data-root, exec-root and socket)
    scenarios.py   the Dockerfiles that are timed, and the CPU-loop calibration
    tools.py       one way to run a build per tool: build-image's CLI, `docker build`
    measure.py     timed repeats, interleaved between tools, as per-tool series
    report.py      medians, ratios against targets, the table and the JSON
    run.py         the command line that ties them together
"""
