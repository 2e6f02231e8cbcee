"""table.csv holds numbers (the formatted cells stay in table.md); summary and table list the arms in one order."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pneumollm.analysis.collect import collect_runs
from pneumollm.analysis.report import aggregate_table, table_arm_order
from pneumollm.analysis.summary import summarise_arm, summary_rows, write_summary
from pneumollm.analysis.tables import CSV_COLUMNS, load_paper_results
from tests.test_aggregate import _fake_run

DELTAS = [f"{d}{suffix}" for d in ("delta_avg", "delta_auc") for suffix in ("", "_ci_low", "_ci_high")]
NO_SLOPE = {c for c in CSV_COLUMNS if c.startswith("calibration_slope_")}


def fake_table6(runs: Path, offsets: dict[str, float], params: int = 10) -> Path:
    """Three folds per arm; each arm's test metrics are 70/80/90 (by fold) plus its offset."""
    for arm, offset in offsets.items():
        for fold in range(3):
            _fake_run(runs, arm, fold, [(f"{arm}{fold}a", f"P{fold}a", 1, 0.9), (f"{arm}{fold}b", f"P{fold}b", 0, 0.2),
                                        (f"{arm}{fold}c", f"P{fold}c", 1, 0.4 + 0.1 * fold)])
            path = runs / arm / f"fold{fold}" / "metrics.json"
            metrics = json.loads(path.read_text())
            metrics.update({k: v + offset for k, v in metrics.items() if k.startswith("test/")})
            metrics.update(trainable_params=params, peak_memory_mb=2048.0)
            path.write_text(json.dumps(metrics))
    return runs


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_table_csv_is_numeric_with_empty_reference_deltas(tmp_path: Path) -> None:
    runs = fake_table6(tmp_path / "runs", {"baseline": 0.0, "pneumollm": 5.0})
    report = aggregate_table(runs, tmp_path, "table6", reference="baseline", num_folds=3, n_boot=100,
                             use_wandb=False)
    rows = {r["arm"]: r for r in _rows(tmp_path / "table.csv")}
    assert list(next(iter(rows.values()))) == list(CSV_COLUMNS)
    paper = {r.arm: r for r in load_paper_results() if r.table == "table6"}
    for arm, row in rows.items():
        lacking = {"paper_memory_gb"} if paper[arm].memory_gb is None else set()  # the paper gives none
        lacking |= {"paper_trainable_params_m"} if paper[arm].trainable_params_m is None else set()
        lacking |= NO_SLOPE  # each negative (0.2) lies below every positive: the slope has no finite estimate
        for column, cell in row.items():
            if column in ("arm", "label"):
                continue
            if cell == "":
                assert (arm == "baseline" and column in DELTAS) or column in lacking, (arm, column)
            else:
                float(cell)  # every other cell is a number
    assert all(rows["baseline"][c] == "" for c in DELTAS)  # the reference's own differences do not exist
    ours = rows["pneumollm"]
    assert [float(ours[c]) for c in DELTAS[:3]] == [5.0, 5.0, 5.0]  # +5 in every fold
    assert float(ours["avg_mean"]) == pytest.approx(85.0) and float(ours["avg_std"]) == pytest.approx(10.0)
    assert float(ours["pooled_auc_ci_low"]) <= float(ours["pooled_auc"]) <= float(ours["pooled_auc_ci_high"])
    assert ours["trainable_params"] == "10" and ours["full_size_trainable_params"] == "2704000"  # integers
    assert rows["baseline"]["full_size_trainable_params"] == "667776"
    assert float(ours["paper_avg"]) == 75.76 and ours["paper_trainable_params_m"] == ""  # Table 6 gives none
    assert float(ours["peak_memory_gb"]) == 2.0
    text = (tmp_path / "table.csv").read_text()
    assert "±" not in text and "[" not in text and "ref" not in text
    markdown = (tmp_path / "table.md").read_text()
    assert "85.00 ± 10.00" in markdown and "5.00 [5.00, 5.00]" in markdown  # the formatted cells stay here
    cells = {c[0]: c for c in report.cells}
    assert cells["pneumollm"][7] == "85.00 ± 10.00"  # what the console prints
    assert cells["pneumollm"][9] == "5.00 [5.00, 5.00]" and cells["baseline"][9] == "ref"


def test_without_a_reference_no_arm_is_marked_ref(tmp_path: Path) -> None:
    runs = fake_table6(tmp_path / "runs", {"adapter": 1.0, "pneumollm": 5.0})
    report = aggregate_table(runs, tmp_path, "table6", num_folds=3, n_boot=50, use_wandb=False)
    assert all(cells[9] == "–" and cells[10] == "–" for cells in report.cells)
    assert all(r[c] == "" for r in _rows(tmp_path / "table.csv") for c in DELTAS)


def test_summary_and_table_list_the_arms_in_one_order(tmp_path: Path) -> None:
    runs = fake_table6(tmp_path / "runs", {"pneumollm": 5.0, "adapter": 2.0, "baseline": 0.0})
    arms = collect_runs(runs)
    assert list(arms) == ["adapter", "baseline", "pneumollm"]  # collected by folder name
    order = table_arm_order(arms, "table6")
    assert order == ["baseline", "adapter", "pneumollm"]  # the paper's rows
    summaries = [summarise_arm(a) for a in arms.values()]
    write_summary(summaries, tmp_path, order=order)
    aggregate_table(runs, tmp_path, "table6", reference="baseline", num_folds=3, n_boot=50, use_wandb=False,
                    arms=arms)
    summary_arms = list(dict.fromkeys(r["arm"] for r in _rows(tmp_path / "summary.csv")))
    assert summary_arms == [r["arm"] for r in _rows(tmp_path / "table.csv")] == order

    def md_arms(name: str) -> list[list[str]]:
        """The arms of each Markdown table of the file (the main table, then the calibration section's), in order."""
        tables: list[list[str]] = []
        in_body = False
        for line in (tmp_path / name).read_text().splitlines():
            if line.startswith("|:"):  # the separator under a table's header
                tables.append([])
                in_body = True
            elif line.startswith("| ") and in_body:
                tables[-1].append(line.split("|")[1].strip())
            elif not line.startswith("|"):
                in_body = False
        return [list(dict.fromkeys(arms)) for arms in tables]

    assert md_arms("summary.md") == md_arms("table.md") == [order, order]  # the main table, calibration
    assert [r["arm"] for r in summary_rows(summaries, order=order)][::4] == order  # 3 folds + mean per arm
    write_summary(summaries, tmp_path)  # without an order: the order given
    assert list(dict.fromkeys(r["arm"] for r in _rows(tmp_path / "summary.csv"))) == list(arms)


def test_a_figure_with_a_curve_orders_both_along_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for arm, m in (("m1", 1), ("m10", 10), ("m2", 2)):
        for fold in range(3):
            run = _fake_run(runs, arm, fold, [(f"{arm}{fold}a", f"P{fold}a", 1, 0.8),
                                              (f"{arm}{fold}b", f"P{fold}b", 0, 0.3)])
            (run / "config.yaml").write_text(f"experiment:\n  curve: model.m\nmodel:\n  m: {m}\n")
    arms = collect_runs(runs)
    order = table_arm_order(arms, "fig6b")
    assert order == ["m1", "m2", "m10"]
    write_summary([summarise_arm(a) for a in arms.values()], tmp_path, order=order)
    aggregate_table(runs, tmp_path, "fig6b", num_folds=3, n_boot=50, use_wandb=False, arms=arms)
    assert [r["arm"] for r in _rows(tmp_path / "table.csv")] == order
    assert list(dict.fromkeys(r["arm"] for r in _rows(tmp_path / "summary.csv"))) == order
