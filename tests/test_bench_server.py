"""bench/server.py's table (no timing assertions: the numbers are made up here)."""

from __future__ import annotations

from bench.measure import Series
from bench.server import SERVER_SCENARIOS, BuildImageServer, server_table


def test_the_server_table_shows_b1_b2_b4_and_judges_b4_against_half_of_buildkit():
    def series(tool, scenario, seconds):
        return Series(tool, scenario, tuple(seconds))

    results = {scenario: {"build-image": series("build-image", scenario, [0.4]),
                          BuildImageServer.name: series(BuildImageServer.name, scenario, [0.2, 0.1, 0.3]),
                          "buildkit": series("buildkit", scenario, [0.5])}
               for scenario in SERVER_SCENARIOS.values()}
    results["cold-20-run"]["buildkit"] = Series("buildkit", "cold-20-run", (), "exit status 1")
    table, rows = server_table(results)
    by_label = {row["label"]: row for row in rows}
    assert list(by_label) == ["b1", "b2", "b4"]
    assert by_label["b4"]["ratio"] == 0.4 and by_label["b4"]["verdict"] == "PASS"
    assert by_label["b1"]["ratio"] is None and by_label["b1"]["buildkit"] is None
    assert "b4   cached-20-run" in table and "<= 0.5x PASS" in table
    assert "b1   cold-20-run" in table and "b2   two-stages" in table      # the issues' b1 and b2
