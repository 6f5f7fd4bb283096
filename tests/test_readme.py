"""README tables are the committed result files' figures (increc_ray.evaluate.report)."""

import json
import os

from increc_ray.evaluate import report

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_every_readme_table_matches_the_result_files():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    found = report.regions(text)
    assert set(found) == set(report.TABLES), f"README table regions {sorted(found)}, expected {sorted(report.TABLES)}"
    for name, body in found.items():
        assert body == report.TABLES[name](report.RESULTS), (
            f"README table {name!r} differs from bench/results: run python -m increc_ray.evaluate.report README.md")


def test_a_table_has_a_row_per_result_file(tmp_path):
    assert report.harness_vs_live(str(tmp_path)).count("\n") == 1  # header only: no results, no rows
    text = "a\n<!-- table:burst -->\nstale\n<!-- /table -->\nb"
    assert report.render(text, str(tmp_path)) == "a\n<!-- table:burst -->\n" + report.burst_check(str(tmp_path)) + "\n<!-- /table -->\nb"


def _run(path, name: str, items: int, p50: float, p99: float) -> None:
    run = {"items": items, "setup": {"n_items": items}, "profile": "large-catalogue",
           "model_freshness": {"trials": 10, "timeouts": 0, "event_rate": 100.0, "trainer_unread_events": [0, 50],
                               "p50_s": p50, "p99_s": p99,
                               "stages_p50_s": {"cleaned": 0.2, "read": 0.4, "live": 0.6, "on_every_replica": p50}}}
    (path / name).write_text(json.dumps(run))


def test_the_goal_summary_counts_runs_and_the_ones_that_met_it(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "SERVE_GOAL_RUNS", (("a.json", "a"), ("b.json", "b"), ("c.json", "c"), ("missing.json", "m")))
    _run(tmp_path, "a.json", 10_000, 0.8, 1.2)  # met
    _run(tmp_path, "b.json", 10_000, 2.0, 9.5)  # not met
    _run(tmp_path, "c.json", 1_000_000, 4.0, 7.9)
    rows = report.serve_goals_summary(str(tmp_path)).splitlines()[2:]
    assert rows == ["| model freshness: event to a live version that learned it, on every replica | 10k items "
                    "| p50 < 1 s, p99 < 3 s | 2 | 1 | p99 1.2 s - 9.5 s |",
                    "| model freshness: event to a live version that learned it, on every replica | 1M items "
                    "| p50 < 1 s, p99 < 3 s | 1 | 0 | p99 7.9 s |"]


def test_the_rates_table_has_a_row_per_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "FRESHNESS_RATE_FILES", ("r.json",))
    _run(tmp_path, "r.json", 10_000, 0.8, 1.2)
    run = json.loads((tmp_path / "r.json").read_text())
    run["model_freshness_by_rate"] = [{"trials": 3, "timeouts": 3, "event_rate": 0.0, "trainer_unread_events": [5]}]
    (tmp_path / "r.json").write_text(json.dumps(run))
    rows = report.freshness_rates(str(tmp_path)).splitlines()[2:]
    assert rows == ["| `r.json` | 10,000 items | large-catalogue | 100 | 10 of 10 | 0-50 | 0.80 / 1.20 "
                    "| 0.20 / 0.40 / 0.60 / 0.80 | yes |",
                    "| `r.json` | 10,000 items | large-catalogue | 0 | 0 of 3 | 5 | - | - | no |"]
