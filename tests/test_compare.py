"""pneumollm-compare: two studies' tables side by side per arm, B − A, from table.csv or summary.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pneumollm.analysis.report import aggregate_table
from pneumollm.cli.aggregate import main as aggregate_main
from pneumollm.cli.compare import main as compare_main
from tests.helpers import markdown_rows
from tests.test_tables_csv import fake_table6


def _study(root: Path, offsets: dict[str, float], params: int = 10) -> Path:
    fake_table6(root / "runs", offsets, params=params)
    aggregate_table(root / "runs", root, "table6", reference="baseline", num_folds=3, n_boot=50, use_wandb=False)
    return root


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {r["arm"]: r for r in csv.DictReader(handle)}


def test_two_tables_side_by_side_with_b_minus_a(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _study(tmp_path / "tiny", {"baseline": 0.0, "pneumollm": 5.0}, params=10)
    b = _study(tmp_path / "full", {"baseline": 2.0, "pneumollm": 4.0, "adapter": 3.0}, params=2_704_000)
    out = tmp_path / "cmp.csv"
    assert compare_main([str(a), str(b), "--metrics", "auc,avg,params", "--out", str(out)]) == 0
    rows = _csv(out)
    assert list(rows) == ["baseline", "pneumollm", "adapter"]  # A's order, then the arm only B has
    assert list(rows["baseline"]) == ["arm", "label", "auc_a", "auc_b", "auc_diff", "avg_a", "avg_b", "avg_diff",
                                      "trainable_params_a", "trainable_params_b", "trainable_params_diff"]
    assert float(rows["baseline"]["avg_a"]) == 80.0 and float(rows["baseline"]["avg_b"]) == 82.0
    assert float(rows["baseline"]["avg_diff"]) == 2.0 and float(rows["pneumollm"]["auc_diff"]) == -1.0
    assert float(rows["pneumollm"]["trainable_params_diff"]) == 2_703_990
    assert rows["adapter"]["avg_a"] == "" and rows["adapter"]["avg_diff"] == "" and rows["adapter"]["avg_b"] == "83.0"
    printed = capsys.readouterr().out
    line = next(t for t in printed.splitlines() if "pneumollm" in t and "│" in t)
    assert "85.00" in line and "84.00" in line and "-1.00" in line and "+2,703,990" in line  # one row, one line
    assert f"A = {a / 'table.csv'}" in printed and "table6: 3-fold cross-validation, size=?" in printed


def test_markdown_output_and_a_summary_without_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _study(tmp_path / "a", {"baseline": 0.0, "pneumollm": 5.0})
    b = tmp_path / "b"
    fake_table6(b / "runs", {"baseline": 1.0, "pneumollm": 1.0})
    assert aggregate_main([str(b / "runs"), "--num-folds", "3", "--out", str(b)]) == 0  # summary only
    assert not (b / "table.csv").exists()
    out = tmp_path / "cmp.md"
    assert compare_main([str(a), str(b), "--metrics", "avg,sens", "--out", str(out)]) == 0
    markdown = out.read_text()
    rows = markdown_rows(markdown)
    assert rows[0] == ["Arm", "AVG A", "AVG B", "AVG B−A", "Sens. A", "Sens. B", "Sens. B−A"]
    assert ["pneumollm", "85.00", "81.00", "-4.00"] in [r[:4] for r in rows]
    assert ["baseline", "80.00", "81.00", "+1.00"] in [r[:4] for r in rows]
    assert f"B = {b / 'summary.csv'}" in markdown


def test_a_folder_without_a_table_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _study(tmp_path / "a", {"baseline": 0.0})
    (tmp_path / "empty").mkdir()
    assert compare_main([str(a), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no table.csv" in err[0]
    assert compare_main([str(tmp_path), str(a)]) == 2  # a folder of studies names them
    assert "pass one of them: a" in capsys.readouterr().err
    assert compare_main([str(a), str(a), "--metrics", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert compare_main([str(a), str(a), "--out", str(tmp_path / "x.txt")]) == 2
    assert "error: --out" in capsys.readouterr().err


def test_an_old_formatted_table_csv_falls_back_to_the_summary(tmp_path: Path) -> None:
    a = _study(tmp_path / "a", {"baseline": 0.0})
    assert aggregate_main([str(a / "runs"), "--num-folds", "3", "--out", str(a)]) == 0
    (a / "table.csv").write_text("arm,Arm,AUC\nbaseline,baseline,80.00 ± 10.00\n")  # written before numbers
    out = tmp_path / "cmp.csv"
    assert compare_main([str(a), str(a), "--metrics", "auc", "--out", str(out)]) == 0
    assert float(_csv(out)["baseline"]["auc_a"]) == 80.0


def test_two_arms_of_one_study(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _study(tmp_path / "study", {"baseline": 0.0, "pneumollm": 5.0})
    out = tmp_path / "arms.csv"
    assert compare_main([str(a), "--arms", "baseline,pneumollm", "--metrics", "auc,avg", "--out", str(out)]) == 0
    (row,) = _csv(out).values()
    assert row["arm"] == "pneumollm vs baseline"
    assert float(row["avg_a"]) == 80.0 and float(row["avg_b"]) == 85.0 and float(row["avg_diff"]) == 5.0
    printed = capsys.readouterr().out
    assert f"A = {a / 'table.csv'} (arm baseline of " in printed and "no arm is in both" not in printed
    assert compare_main([str(a), "--arms", "baseline,nope"]) == 2
    assert "--arms: 'nope' is not an arm of" in capsys.readouterr().err
    assert compare_main([str(a), "--arms", "baseline"]) == 2
    assert "--arms takes two arms" in capsys.readouterr().err
    assert compare_main([str(a)]) == 2
    assert "or one study and --arms A,B" in capsys.readouterr().err


def test_an_arm_folder_gets_advice_that_works(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _study(tmp_path / "study", {"baseline": 0.0, "pneumollm": 5.0})
    for folder in (a / "runs" / "baseline", a / "runs"):
        assert compare_main([str(folder), str(a)]) == 2
        err = capsys.readouterr().err
        assert f"of the study {a}: pass the study" in err and f"pneumollm-compare {a} --arms A,B" in err
    assert aggregate_main([str(a), "--num-folds", "3", "--no-wandb"]) == 0  # the study, as the advice says
    assert compare_main([str(a), "--arms", "baseline,pneumollm"]) == 0
