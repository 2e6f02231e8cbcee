"""The model card of an export: a section per reporting item, each with the numbers recomputed from the runs'
files, and the external and subgroup results of the arm's study where there are some."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from pneumollm.analysis.calibration import summarise_calibration
from pneumollm.analysis.collect import read_predictions
from pneumollm.analysis.stats import bootstrap_auc_by_patient
from pneumollm.cli.aggregate import main as aggregate_main
from pneumollm.cli.export import main as export_main
from pneumollm.cli.external import main as external_main
from pneumollm.inference.model_card import CALIBRATION_DIGITS, SECTIONS, interval
from pneumollm.training.calibration_metrics import CALIBRATION_METRICS
from pneumollm.training.run import run_fold
from tests.helpers import compose_train, make_noisy_manifest, make_toy_manifest
from tests.test_recalibration_runs import SETTINGS

ARM = "timm_resnet18"
BOOT = 200


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three folds of one arm on a cohort with a site column, a missing film and a too small one:
    <root>/table/study/timm_resnet18/fold<k>; returns <root>/table/study."""
    root = tmp_path_factory.mktemp("card")
    manifest = make_noisy_manifest(root / "cohort", faulty=True)
    for fold in range(3):
        run_fold(compose_train([*SETTINGS, f"data.source.manifest={manifest}", f"paths.root_dir={root}",
                                f"data.fold={fold}"], run_dir=root / "table/study" / ARM / f"fold{fold}"))
    return root / "table/study"


def _export(study: Path, out: Path) -> tuple[str, dict]:
    assert export_main([str(study / ARM), "--out", str(out), "--bootstrap", str(BOOT)]) == 0
    return (out / "README.md").read_text(), json.loads((out / "export.json").read_text())


def _flat(card: str) -> str:
    """The card with runs of spaces collapsed (its tables pad their cells)."""
    return re.sub(r" +", " ", card)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_the_card_has_every_section_with_the_recomputed_numbers(study: Path, tmp_path: Path) -> None:
    card, record = _export(study, tmp_path / "export")
    card = _flat(card)
    headings = [line.removeprefix("## ") for line in card.splitlines() if line.startswith("## ")]
    assert headings == list(SECTIONS)
    assert "Research use only" in card and "Tiny size" in card and "normal / pneumoconiosis" in card
    # discrimination and calibration of the pooled out-of-fold predictions, recomputed from predictions.csv
    folds = [json.loads((study / ARM / f"fold{k}/metrics.json").read_text()) for k in range(3)]
    predictions = [p for k in range(3) for p in read_predictions(study / ARM / f"fold{k}/predictions.csv")]
    labels, probs = [p.label for p in predictions], [p.prob for p in predictions]
    patients = [p.patient_id for p in predictions]
    auc = bootstrap_auc_by_patient(labels, probs, patients, n_boot=BOOT)
    assert f"AUC {auc.format()} (95 % percentile bootstrap over patients, {BOOT} resamples)" in card
    assert record["pooled_auc"] == {"estimate": auc.estimate, "ci_low": auc.low, "ci_high": auc.high}
    summary = summarise_calibration(labels, probs, [p.logit for p in predictions], patients,
                                    folds=[p.fold for p in predictions], n_boot=BOOT)
    for metric in CALIBRATION_METRICS:
        pooled, recorded = summary.pooled[metric], record["card"]["performance"]["calibration"][metric]
        assert (recorded["estimate"], recorded["ci_low"], recorded["ci_high"]) == (pooled.estimate, pooled.low,
                                                                                  pooled.high)
        assert interval(pooled.estimate, pooled.low, pooled.high, CALIBRATION_DIGITS[metric]) in card
        assert recorded["fold_mean"] == pytest.approx(sum(f[f"test/{metric}"] for f in folds) / 3, rel=1e-9)
    # the films used and skipped, as the prepared cohort's report lists them
    report = _rows(Path(folds[0]["cohort_folder"]) / "preprocess_report.csv")
    assert len(report) == 47 and sum(r["status"] == "skipped" for r in report) == 2
    assert "47 films listed, 45 usable, 2 skipped. 45 films of 45 patients were used" in card
    assert "| file not found | 1 |" in card and "| smaller than the 16-pixel minimum (data.min_film_size) | 1 |" in card
    # the patient-level split, fold by fold, as each run recorded it
    assert "3-fold cross-validation at the patient level" in card and "40% of the training patients" in card
    for f in folds:
        s = f["splits"]
        assert (f"| {f['fold']} | {s['train']['films']} ({s['train']['patients']}) | {s['val']['films']} "
                f"({s['val']['patients']}) | {s['test']['films']} ({s['test']['patients']}) |") in card
    assert "Threshold: a fixed cut-off" in card and "Recalibration: none (the model's own probabilities)" in card
    assert "`val/avg` (max)" in card
    assert "None in the study folder when this export was made: `pneumollm-external" in card
    assert "None in the study folder when this export was made: `pneumollm-aggregate" in card


def test_the_card_shows_the_external_and_subgroup_results_of_the_study(study: Path, tmp_path: Path) -> None:
    assert aggregate_main([str(study), "--num-folds", "3", "--by", "site", "--bootstrap", "50", "--no-wandb"]) == 0
    other = make_toy_manifest(tmp_path / "other_site", n_patients=12, size=40, seed=5)
    assert external_main([str(study.parent), str(other), "--num-folds", "3", "--bootstrap", "50",
                          "--no-progress"]) == 0
    card, record = _export(study, tmp_path / "export")
    card = _flat(card)
    (table,) = study.glob("external/*/table.csv")
    (row,) = [r for r in _rows(table) if r["arm"] == ARM]
    shown = interval(float(row["auc"]), float(row["pooled_auc_ci_low"]), float(row["pooled_auc_ci_high"]))
    brier = interval(float(row["brier"]), float(row["brier_ci_low"]), float(row["brier_ci_high"]), 3)
    assert f"| {table.parent.name} | 12 | 12 |" in card and shown in card and brier in card
    assert record["card"]["external"][0]["auc"] == float(row["auc"])
    sites = {r["value"]: r for r in _rows(study / "by_site.csv") if r["arm"] == ARM}
    assert set(sites) == {"A", "B"} and "By `site`" in card
    for value, r in sites.items():
        auc = interval(float(r["pooled_auc"]), float(r["pooled_auc_ci_low"]), float(r["pooled_auc_ci_high"]))
        assert f"| {value} | {r['films']} | {r['patients']} | {r['positive_films']} |" in card and auc in card
