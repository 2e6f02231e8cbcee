"""One source of truth: every figure of a cross-validation table, an external table and a staged table is
recomputed here from the predictions.csv files alone (pandas and scikit-learn, none of the suite's functions) and
found equal to what metrics.json, summary.csv/md, table.csv/md, by_<column>.csv, decision_curve.csv and
pneumollm-compare show."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar, root
from sklearn.calibration import calibration_curve
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from pneumollm.cli.aggregate import main as aggregate_main
from pneumollm.cli.compare import main as compare_main
from pneumollm.cli.external import main as external_main
from pneumollm.training.run import run_fold
from tests.helpers import compose_train, make_staged_manifest, make_toy_manifest, markdown_rows
from tests.test_predict import BASE

METRICS = ("sensitivity", "specificity", "accuracy", "auc", "avg")
SUMMARY_HEADERS = {"sensitivity": "Sens.", "specificity": "Spec.", "accuracy": "Acc.", "auc": "AUC", "avg": "AVG"}


def binary_figures(df: pd.DataFrame, calls: pd.Series) -> dict[str, float]:
    """Sens./Spec./Acc./AUC/AVG in percent of a predictions table and its 0/1 calls, written out by hand."""
    positive = df["label"] == 1
    values = {"sensitivity": calls[positive].mean() * 100, "specificity": (1 - calls[~positive]).mean() * 100,
              "accuracy": (calls == df["label"]).mean() * 100, "auc": roc_auc_score(df["label"], df["prob"]) * 100}
    values["avg"] = sum(values.values()) / 4
    return values


CALIBRATION = ("brier", "ece", "calibration_slope", "calibration_intercept")


def calibration_figures(labels: pd.Series, probs: pd.Series, logits: pd.Series | None) -> dict[str, float]:
    """Brier, ECE (10 equal-width bins weighted by films), calibration slope and intercept written out by hand:
    scikit-learn's calibration_curve; the slope from the joint model's score equations solved by scipy's root; the
    intercept by minimising the offset model's negative log-likelihood. The log-odds: the stored logit column, else
    those of prob clipped to [1e-6, 1 - 1e-6]; no slope where they separate the classes."""
    y, p = labels.to_numpy().astype(int), probs.to_numpy(dtype=float)
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    z = logits.to_numpy(dtype=float) if logits is not None else np.log(clipped / (1 - clipped))
    observed, predicted = calibration_curve(y, p, n_bins=10)
    counts = pd.Series(pd.cut(p, np.linspace(0, 1, 11), include_lowest=True)).value_counts(sort=False).to_numpy()
    values = {"brier": float(np.mean((p - y) ** 2)),
              "ece": float(np.sum(counts[counts > 0] * np.abs(observed - predicted)) / len(y))}
    design = np.column_stack([np.ones_like(z), z])

    def score(beta: np.ndarray) -> np.ndarray:
        return design.T @ (y - 1 / (1 + np.exp(-design @ beta)))

    def jacobian(beta: np.ndarray) -> np.ndarray:
        q = 1 / (1 + np.exp(-design @ beta))
        return -(design * (q * (1 - q))[:, None]).T @ design

    overlap = z[y == 1].min() < z[y == 0].max() and z[y == 0].min() < z[y == 1].max()
    values["calibration_slope"] = float(root(score, np.zeros(2), jac=jacobian, tol=1e-14).x[1]) if overlap \
        else float("nan")
    values["calibration_intercept"] = float(minimize_scalar(
        lambda a: float(np.sum(np.logaddexp(0, a + z) - y * (a + z))), bounds=(-30, 30), method="bounded",
        options={"xatol": 1e-12}).x)
    return values


def same(value: str | float, expected: float) -> bool:
    """A stored figure (a CSV cell or a metrics.json number) equals a recomputed one; empty / NaN where it has none
    (slope and intercept to 1e-5: they come from other optimisers here)."""
    stored = float("nan") if value == "" else float(value)
    if np.isnan(expected):
        return bool(np.isnan(stored))
    return stored == pytest.approx(expected, rel=1e-5, abs=1e-5)


def two(value: float) -> str:
    return f"{value:.2f}"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _fold_tables(runs: Path, arm: str) -> dict[int, pd.DataFrame]:
    return {int(d.name[4:]): pd.read_csv(d / "predictions.csv") for d in sorted((runs / arm).glob("fold*"))}


def _add_site(manifest: Path) -> Path:
    """The manifest with a ``site`` column (patients 0, 1, 4, 5, ... north, the others south: both classes each)."""
    table = pd.read_csv(manifest)
    table["site"] = ["north" if int(p[1:]) % 4 < 2 else "south" for p in table["patient_id"]]
    table.to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def binary_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny arms x three folds on a toy cohort with a site column, aggregated with --table and --by site,
    scored on an external cohort: <root>/table/study/{runs, summary.*, table.*, by_site.*, external/}."""
    root = tmp_path_factory.mktemp("binary")
    manifest = _add_site(make_toy_manifest(root / "cohort", n_patients=15, films_per_patient=1, size=64))
    for arm in ("baseline", "pneumollm"):
        for fold in range(3):
            cfg = compose_train([*BASE, f"data.source.manifest={manifest}", f"paths.root_dir={root}",
                                 f"data.fold={fold}", f"arm={arm}", "experiment.reference=baseline"],
                                run_dir=root / "table" / "study" / "runs" / arm / f"fold{fold}")
            run_fold(cfg)
    study = root / "table" / "study"
    assert aggregate_main([str(study), "--num-folds", "3", "--table", "table6", "--bootstrap", "50", "--by", "site",
                           "--no-wandb"]) == 0
    external = make_toy_manifest(root / "other_site", n_patients=12, films_per_patient=2, size=64, seed=5)
    assert external_main([str(root / "table"), str(external), "--num-folds", "3", "--bootstrap", "50",
                          "--no-progress"]) == 0
    return study


def test_each_folds_metrics_are_its_predictions_figures(binary_study: Path) -> None:
    slopes = []
    for arm in ("baseline", "pneumollm"):
        for fold, df in _fold_tables(binary_study / "runs", arm).items():
            metrics = json.loads((binary_study / "runs" / arm / f"fold{fold}" / "metrics.json").read_text())
            assert (df["pred"] == (df["prob"] > metrics["threshold"]).astype(int)).all()  # calls follow the cut-off
            assert np.isfinite(df["logit"]).all()
            assert np.allclose(1 / (1 + np.exp(-df["logit"])), df["prob"], rtol=1e-6, atol=1e-7)
            for metric, value in binary_figures(df, df["pred"]).items():
                assert metrics[f"test/{metric}"] == pytest.approx(value, rel=1e-12, abs=1e-12), (arm, fold, metric)
            for metric, value in calibration_figures(df["label"], df["prob"], df["logit"]).items():
                assert same(metrics[f"test/{metric}"], value), (arm, fold, metric)
            slopes.append(metrics["test/calibration_slope"])
    assert np.isfinite(slopes).any()  # some folds' log-odds overlap across the classes: their slopes were compared


def test_summary_and_table_are_the_predictions_figures(binary_study: Path) -> None:
    summary = {(r["arm"], r["fold"]): r for r in _csv_rows(binary_study / "summary.csv")}
    table = {r["arm"]: r for r in _csv_rows(binary_study / "table.csv")}
    summary_md = {(r[0], r[1]): r for r in markdown_rows((binary_study / "summary.md").read_text())}
    table_rows = markdown_rows((binary_study / "table.md").read_text(), table=0)
    calibration_rows = markdown_rows((binary_study / "table.md").read_text(), table=1)  # the calibration section
    calibration_md = {r[0]: dict(zip(calibration_rows[0], r)) for r in calibration_rows[1:]}
    table_md = {r[0]: dict(zip(table_rows[0], r)) for r in table_rows[1:]}
    for arm in ("baseline", "pneumollm"):
        folds = _fold_tables(binary_study / "runs", arm)
        label = summary[(arm, "mean")]["label"]
        per_fold = pd.DataFrame({f: binary_figures(df, df["pred"]) for f, df in folds.items()}).T
        pooled = roc_auc_score(pd.concat(folds.values())["label"], pd.concat(folds.values())["prob"]) * 100
        for fold in folds:
            for metric in METRICS:
                value = per_fold.loc[fold, metric]
                assert float(summary[(arm, str(fold))][metric]) == pytest.approx(value, rel=1e-12)
                assert summary_md[(label, str(fold))][list(summary_md[("arm", "fold")]).index(
                    SUMMARY_HEADERS[metric])] == two(value)
        for metric in METRICS:
            mean, std = per_fold[metric].mean(), per_fold[metric].std(ddof=1)
            assert float(summary[(arm, "mean")][metric]) == pytest.approx(mean, rel=1e-12)
            assert float(summary[(arm, "std")][metric]) == pytest.approx(std, rel=1e-9, abs=1e-9)
            assert float(table[arm][f"{metric}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(table[arm][f"{metric}_std"]) == pytest.approx(std, rel=1e-9, abs=1e-9)
            assert table_md[label][SUMMARY_HEADERS[metric]] == f"{two(mean)} ± {two(std)}"
        assert float(summary[(arm, "mean")]["pooled_auc"]) == pytest.approx(pooled, rel=1e-12)
        assert float(table[arm]["pooled_auc"]) == pytest.approx(pooled, rel=1e-12)
        assert table_md[label]["pooled AUC [95% CI]"].startswith(f"{two(pooled)} [")
        everything = pd.concat(folds.values())
        pooled_calibration = calibration_figures(everything["label"], everything["prob"], everything["logit"])
        fold_calibration = {f: calibration_figures(df["label"], df["prob"], df["logit"]) for f, df in folds.items()}
        for metric in CALIBRATION:
            assert same(summary[(arm, "mean")][f"pooled_{metric}"], pooled_calibration[metric]), (arm, metric)
            assert same(table[arm][f"{metric}_pooled"], pooled_calibration[metric]), (arm, metric)
            per_fold_values = [fold_calibration[f][metric] for f in folds]
            for fold in folds:
                assert same(summary[(arm, str(fold))][metric], fold_calibration[fold][metric]), (arm, fold, metric)
            assert same(table[arm][f"{metric}_mean"], float(np.nanmean(per_fold_values))), (arm, metric)
        assert calibration_md[label]["Brier [95% CI]"].startswith(f"{pooled_calibration['brier']:.3f} [")
        decisions = pd.read_csv(binary_study / "decision_curve.csv")
        for _, row in decisions.iloc[::10].iterrows():
            referred = everything["prob"] > row["threshold"]
            n, odds = len(everything), row["threshold"] / (1 - row["threshold"])
            tp, fp = (referred & (everything["label"] == 1)).sum(), (referred & (everything["label"] == 0)).sum()
            assert row[arm] == pytest.approx(tp / n - fp / n * odds, rel=1e-12, abs=1e-12)
            assert row["treat_all"] == pytest.approx(everything["label"].mean() - (1 - everything["label"].mean())
                                                     * odds, rel=1e-12, abs=1e-12)


def test_the_subgroup_rows_are_the_predictions_figures(binary_study: Path) -> None:
    rows = {(r["arm"], r["value"]): r for r in _csv_rows(binary_study / "by_site.csv")}
    for arm in ("baseline", "pneumollm"):
        everything = pd.concat(_fold_tables(binary_study / "runs", arm).values())
        for site, df in everything.groupby("site"):
            expected = binary_figures(df, df["pred"])  # calls at each fold's own threshold
            row = rows[(arm, site)]
            for metric in ("sensitivity", "specificity", "accuracy"):
                assert float(row[metric]) == pytest.approx(expected[metric], rel=1e-12)
            assert float(row["pooled_auc"]) == pytest.approx(expected["auc"], rel=1e-12)


def test_compare_prints_the_tables_figures_to_the_last_digit(binary_study: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp.md"
    assert compare_main([str(binary_study), str(binary_study), "--metrics", "sens,auc,avg,pooled_auc", "--out",
                         str(out)]) == 0
    rows = markdown_rows(out.read_text())
    header, body = rows[0], {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert header[:4] == ["Arm", "Sens. A", "Sens. B", "Sens. B−A"]
    table = {r["label"]: r for r in _csv_rows(binary_study / "table.csv")}
    summary_md = {(r[0], r[1]): r for r in markdown_rows((binary_study / "summary.md").read_text())}
    for label, cells in body.items():
        arm = table[label]["arm"]
        folds = _fold_tables(binary_study / "runs", arm)
        per_fold = pd.DataFrame({f: binary_figures(df, df["pred"]) for f, df in folds.items()}).T
        pooled = roc_auc_score(pd.concat(folds.values())["label"], pd.concat(folds.values())["prob"]) * 100
        assert cells["Sens. A"] == cells["Sens. B"] == two(per_fold["sensitivity"].mean())
        assert cells["AUC A"] == two(per_fold["auc"].mean()) and cells["AVG A"] == two(per_fold["avg"].mean())
        assert cells["pooled AUC A"] == two(pooled) == summary_md[(label, "mean ± std")][-1]
        assert cells["AUC B−A"] == "0.00"


def test_the_external_table_is_its_predictions_figures(binary_study: Path) -> None:
    (folder,) = (binary_study / "external").iterdir()
    films = pd.read_csv(folder / "predictions.csv")
    table = {r["arm"]: r for r in _csv_rows(folder / "table.csv")}
    rows = markdown_rows((folder / "table.md").read_text(), table=0)
    table_md = {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    for arm, row in table.items():
        calls = (films[arm] > float(row["threshold"])).astype(int)
        expected = binary_figures(films.assign(prob=films[arm]), calls)
        for metric in METRICS:
            assert float(row[metric]) == pytest.approx(expected[metric], rel=1e-12), (arm, metric)
            assert table_md[row["label"]][SUMMARY_HEADERS[metric]] == two(expected[metric])
        assert table_md[row["label"]]["AUC [95% CI]"].startswith(f"{two(expected['auc'])} [")
        assert np.isfinite(films[f"logit_{arm}"]).all()
        for metric, value in calibration_figures(films["label"], films[arm], films[f"logit_{arm}"]).items():
            assert same(row[metric], value), (arm, metric)
        decisions = pd.read_csv(folder / "decision_curve.csv")
        half = decisions.iloc[49]  # threshold 0.5
        referred = films[arm] > 0.5
        assert half[arm] == pytest.approx(((referred & (films["label"] == 1)).sum() - (referred & (films["label"] ==
                                           0)).sum()) / len(films), rel=1e-12, abs=1e-12)
    assert {"calibration.png", "decision_curve.png"} <= {p.name for p in folder.iterdir()}
    title = (folder / "table.md").read_text().splitlines()[0]
    assert "size=tiny (CPU stand-ins)" in title and "pneumoconiosis vs normal" in title


@pytest.fixture(scope="module")
def staged_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny arm x two folds of the staged (ILO 0-3) task, aggregated with --table: <root>/study."""
    root = tmp_path_factory.mktemp("staged")
    manifest = make_staged_manifest(root / "cohort", patients_per_stage=6)
    toy = ["data=manifest", "lungs=none", "data.progress=false", "data.preprocess_workers=1", "data.min_film_size=16",
           "data.num_folds=2", "data.val_fraction=0.25", "data.batch_size=8", "trainer=cpu", "logger=none",
           "callbacks.progress=null", "trainer.max_epochs=2", "data.task=multiclass", "model=timm_resnet18",
           "model.model_name=test_resnet"]
    for fold in range(2):
        cfg = compose_train([*toy, f"data.source.manifest={manifest}", f"paths.root_dir={root}", f"data.fold={fold}"],
                            run_dir=root / "study" / "timm_resnet18" / f"fold{fold}")
        run_fold(cfg)
    assert aggregate_main([str(root / "study"), "--num-folds", "2", "--table", "table6", "--bootstrap", "50",
                           "--no-wandb"]) == 0
    return root / "study"


def stage_figures(df: pd.DataFrame, stages: list[str]) -> dict[str, float]:
    """The staged figures of a predictions table, written out by hand from its stage and prob_stage_* columns."""
    truth = df["stage"].astype(str).map(stages.index)
    called = df["pred_stage"].astype(str).map(stages.index)
    probs = df[[f"prob_stage_{s}" for s in stages]].to_numpy()
    values = {"stage_accuracy": (truth == called).mean() * 100,
              "macro_auc": roc_auc_score(truth, probs, multi_class="ovr", labels=range(len(stages))) * 100,
              "kappa": cohen_kappa_score(truth, called, weights="quadratic", labels=range(len(stages)))}
    for k, name in enumerate(stages):
        values[f"sensitivity_stage_{name}"] = (called[truth == k] == k).mean() * 100
        values[f"specificity_stage_{name}"] = (called[truth != k] != k).mean() * 100
    return values


def test_the_staged_table_is_its_predictions_figures(staged_study: Path) -> None:
    stages = ["0", "1", "2", "3"]
    folds = _fold_tables(staged_study, "timm_resnet18")
    summary = {r["fold"]: r for r in _csv_rows(staged_study / "summary.csv")}
    (table,) = _csv_rows(staged_study / "table.csv")
    for fold, df in folds.items():
        metrics = json.loads((staged_study / "timm_resnet18" / f"fold{fold}" / "metrics.json").read_text())
        expected = {**binary_figures(df, df["pred"]), **stage_figures(df, stages)}
        assert np.argmax(df[[f"prob_stage_{s}" for s in stages]].to_numpy(), axis=1).tolist() == \
            df["pred_stage"].tolist()
        assert metrics["test/confusion"] == pd.crosstab(df["stage"], df["pred_stage"]).reindex(
            index=range(4), columns=range(4), fill_value=0).to_numpy().tolist()
        for key, value in expected.items():
            assert metrics[f"test/{key}"] == pytest.approx(value, rel=1e-12, abs=1e-12), (fold, key)
            assert float(summary[str(fold)][key]) == pytest.approx(value, rel=1e-12, abs=1e-12), (fold, key)
    pooled = stage_figures(pd.concat(folds.values()), stages)
    for key, value in pooled.items():
        assert float(table[f"{key}_pooled"]) == pytest.approx(value, rel=1e-12, abs=1e-12), key
        assert float(summary["mean"][f"pooled_{key}"]) == pytest.approx(value, rel=1e-12, abs=1e-12), key
        per_fold = [stage_figures(df, stages)[key] for df in folds.values()]
        assert float(table[f"{key}_mean"]) == pytest.approx(np.mean(per_fold), rel=1e-12, abs=1e-12), key
    text = (staged_study / "table.md").read_text()
    assert f"| {two(pooled['stage_accuracy'])} [" in text  # the pooled stage accuracy as table.md prints it
    everything = pd.concat(folds.values())  # calibration of P(any): the binary prob and logit columns
    for metric, value in calibration_figures(everything["label"], everything["prob"], everything["logit"]).items():
        assert same(table[f"{metric}_pooled"], value), metric
    assert (staged_study / "calibration.png").is_file() and (staged_study / "decision_curve.csv").is_file()


def test_a_probability_that_rounds_to_one_keeps_its_order_in_the_logit_column() -> None:
    import torch

    from pneumollm.inference.predict import ensemble_log_odds
    from pneumollm.training.losses import CrossEntropyLoss, MultiLabelBCELoss, OneHotBCELoss, positive_log_odds
    from pneumollm.training.records import number_text

    logits = torch.tensor([[0.0, 40.0], [0.0, 30.0], [0.0, 1.5], [2.0, -1.0]])
    loss = OneHotBCELoss()
    p = loss.positive_probability(logits)
    assert p[0] == p[1] == 1.0  # float32 saturates: the probabilities tie
    z = positive_log_odds(loss, logits)
    assert z.tolist() == [40.0, 30.0, 1.5, -3.0]  # l1 - l0: the order survives
    staged = torch.tensor([[0.0, 35.0, 1.0], [5.0, 0.0, 0.0]])
    torch.testing.assert_close(positive_log_odds(CrossEntropyLoss(), staged),
                               torch.tensor([float(torch.tensor([35.0, 1.0]).logsumexp(0)), -5 + np.log(2)],
                                            dtype=torch.float32))
    assert positive_log_odds(MultiLabelBCELoss(positive_index=0), staged).tolist() == [0.0, 5.0]

    class Doubled(OneHotBCELoss):  # a loss that defines its probability otherwise: logit(p) of that probability
        def positive_probability(self, logits: torch.Tensor) -> torch.Tensor:
            return super().positive_probability(logits) / 2

    assert positive_log_odds(Doubled(), logits[2:3]).item() == pytest.approx(np.log(0.5 * 0.8176 / (1 - 0.4088)),
                                                                              rel=1e-3)
    folds = np.array([[2.0, -1.0], [60.0, 50.0]])  # an ensemble of two folds; the second film saturates
    mean_p = (1 / (1 + np.exp(-folds[0]))).mean()
    assert ensemble_log_odds(folds)[0] == pytest.approx(np.log(mean_p / (1 - mean_p)), rel=1e-12)
    assert 49 < ensemble_log_odds(folds)[1] < 51 and np.isfinite(ensemble_log_odds(folds)).all()
    for value in (float(p[2]), 1 / 3, 1e-300, 0.1 + 0.2):
        assert float(number_text(value)) == value  # written exactly


def test_old_runs_with_six_decimal_probabilities_and_no_logit_are_still_read(tmp_path: Path) -> None:
    from pneumollm.analysis.collect import collect_runs, read_predictions
    from tests.test_aggregate import _fake_run

    for fold in range(2):  # as runs wrote them before: 6 decimals, no logit column, no class names or size recorded
        _fake_run(tmp_path / "study", "arm", fold, [(f"a{fold}", f"A{fold}", 1, 1.0), (f"b{fold}", f"B{fold}", 0, 0.0),
                                                   (f"c{fold}", f"C{fold}", 1, 0.000000)])
    (first,) = read_predictions(tmp_path / "study" / "arm" / "fold0" / "predictions.csv")[:1]
    assert first.logit is None and first.prob == 1.0
    arm = collect_runs(tmp_path / "study")["arm"]
    assert arm.class_names == ("normal", "pneumoconiosis") and arm.size is None
    assert aggregate_main([str(tmp_path / "study"), "--num-folds", "2", "--table", "table6", "--bootstrap", "20",
                           "--no-wandb"]) == 0
    pooled = next(r for r in _csv_rows(tmp_path / "study" / "summary.csv") if r["fold"] == "mean")["pooled_auc"]
    assert float(pooled) == 75.0  # 4 won and 4 tied pairs of 8: the ties at 0.000000 the old files carry count half
    mean = next(r for r in _csv_rows(tmp_path / "study" / "summary.csv") if r["fold"] == "mean")
    films = pd.concat(pd.read_csv(tmp_path / "study" / "arm" / f"fold{f}" / "predictions.csv") for f in range(2))
    expected = calibration_figures(films["label"], films["prob"], None)  # no logit column: logit(clipped prob)
    for metric in CALIBRATION:
        assert same(mean[f"pooled_{metric}"], expected[metric]), metric
    assert (tmp_path / "study" / "summary.md").read_text().startswith(
        "# Summary: 2-fold cross-validation, size=?, pneumoconiosis vs normal")
