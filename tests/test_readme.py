"""README tables are the committed result files' figures (increc_ray.evaluate.report)."""

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
