"""External validation: every arm of a finished table, as its folds' ensemble, on a second cohort.

For each study (training cohort) of a table, each complete arm's five fold models are applied to the external
films (prepared as that arm was trained); the table gives the same metric columns as the cross-validation table
on the external films at each arm's threshold, the AUC with a 95 % patient-level bootstrap interval, and the paired
difference in AUC and AVG to the table's reference arm on the same films (paired bootstrap over patients).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from pneumollm.analysis.auc import binary_metrics
from pneumollm.analysis.calibration import EXTERNAL_COLUMNS as CALIBRATION_COLUMNS
from pneumollm.analysis.collect import (
    RUNS_SUBDIR,
    AggregationError,
    ArmRuns,
    Prediction,
    check_complete,
    collect_runs,
    find_studies,
    split_complete,
)
from pneumollm.analysis.stats import Interval, bootstrap_auc_by_patient, paired_bootstrap_difference
from pneumollm.analysis.summary import ArmSummary
from pneumollm.analysis.wording import class_words, common_class_names, probability_name, size_words
from pneumollm.config import data_slug
from pneumollm.data.cohort import FilmRecord, read_manifest
from pneumollm.data.targets import BINARY_CLASSES
from pneumollm.inference.inputs import InputFilm, prepare_inputs
from pneumollm.inference.models import TrainedModel, load_trained
from pneumollm.inference.predict import ensemble_log_odds, fold_scores
from pneumollm.inference.shift import NO_PROFILE, join_reasons, shift_reasons, shift_summary
from pneumollm.training.records import number_text
from pneumollm.training.run_folder import RunFolder
from pneumollm.utils.console import say
from pneumollm.utils.io import atomic_write, atomic_write_text, output_set
from pneumollm.utils.markdown import markdown_table

METRICS = ("sensitivity", "specificity", "accuracy", "auc", "avg")
CSV_COLUMNS = ("arm", "label", "films", "patients", "threshold", *METRICS, "pooled_auc_ci_low",
               "pooled_auc_ci_high", "delta_auc", "delta_auc_ci_low", "delta_auc_ci_high", "delta_avg",
               "delta_avg_ci_low", "delta_avg_ci_high", *CALIBRATION_COLUMNS)


@dataclass
class ExternalArm:
    """One arm's predictions on the external films and its figures there."""

    arm: str
    label: str
    threshold: float
    probs: np.ndarray  # one per usable external film, in the cohort's order
    metrics: dict[str, float]
    auc: Interval
    delta_auc: Interval | None = None
    delta_avg: Interval | None = None
    shift: list[list[str]] = field(default_factory=list)  # per film as probs: why it looks unlike the training films
    profiled: bool = True  # False: the arm's runs have no training-film profile (its shift stays empty)
    log_odds: np.ndarray | None = None  # the log-odds of ``probs`` from the folds' logits
    size: str | None = None  # size_name of the arm's runs (tiny: the CPU stand-ins)
    class_names: tuple[str, str] = BINARY_CLASSES


def external_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, accuracy, AUC and AVG in percent (calls ``prob > threshold``): the function that
    gives every figure of the suite (``training.prediction_metrics``)."""
    return binary_metrics(labels, probs, threshold)


def score_arms(runs_dir: Path, records: list[FilmRecord], n_boot: int = 2000, overrides: tuple[str, ...] = (),
               device: str = "cpu", num_folds: int = 5, progress: bool = True
               ) -> tuple[list[ExternalArm], list[FilmRecord], str | None]:
    """(each complete arm on the films, the films used, the reference arm). Films that fail preprocessing for
    any arm are left out for every arm, so all arms are compared on the same films."""
    arms = collect_runs(runs_dir)
    unfinished = {name: problems[0] for name, arm in arms.items() if (problems := check_complete(arm, num_folds))}
    if len(unfinished) == len(arms):
        raise AggregationError(f"no arm has all {num_folds} folds ({'; '.join(unfinished.values())})")
    complete, _ = split_complete(arms, num_folds, partial=True, source=runs_dir)
    for name, problem in unfinished.items():
        say(f"[yellow]{name} left out (not finished): {problem}")
    models: dict[str, TrainedModel] = {}
    prepared: dict[str, list[InputFilm]] = {}
    for name in complete:
        model = load_trained(runs_dir / name, device, overrides)
        key = model.settings.fingerprint()
        if key not in prepared:  # arms trained with the same preprocessing share the prepared films
            films = [InputFilm(r.path, r.image_id) for r in records]
            prepare_inputs(films, model.settings, progress=progress)
            prepared[key] = films
        models[name] = model
    usable = [i for i in range(len(records)) if all(films[i].status == "ok" for films in prepared.values())]
    if not usable:
        raise AggregationError("none of the external films could be prepared (see the reasons above)")
    labels = np.array([records[i].label for i in usable])
    patients = [records[i].patient_id for i in usable]
    scored = []
    for name, model in models.items():
        films = prepared[model.settings.fingerprint()]
        images = np.stack([films[i].image for i in usable])
        scores = fold_scores(model, images, progress=progress)
        probs = scores.probs.mean(axis=1)
        shift = [shift_reasons(model.profile, films[i].source, films[i].crop_status, films[i].image)
                 if model.profile is not None else [] for i in usable]
        scored.append(ExternalArm(name, complete[name].label, model.threshold, probs,
                                  external_metrics(labels, probs, model.threshold),
                                  bootstrap_auc_by_patient(labels.tolist(), probs.tolist(), patients, n_boot=n_boot),
                                  shift=shift, profiled=model.profile is not None,
                                  log_odds=ensemble_log_odds(scores.log_odds), size=complete[name].size,
                                  class_names=complete[name].class_names))
    first = next(iter(complete.values()))
    config = RunFolder(first.run_dirs[min(first.run_dirs)]).config()
    reference = OmegaConf.select(config, "experiment.reference") if config is not None else None
    ref = next((a for a in scored if a.arm == reference), None)
    if ref is not None:
        for arm in scored:
            if arm is not ref:
                arm.delta_auc, arm.delta_avg = paired_bootstrap_difference(
                    labels, arm.probs, ref.probs, patients, arm.threshold, ref.threshold, n_boot=n_boot)
    return scored, [records[i] for i in usable], reference if ref is not None else None


def film_shifts(arms: list[ExternalArm], n_films: int) -> list[str]:
    """Each film's ``shift`` cell: the distinct reasons of every arm (the arms of a study share their training
    films; arms preprocessed differently may see different input intensities)."""
    return [join_reasons([r for a in arms if a.shift for r in a.shift[i]]) for i in range(n_films)]


def shift_line(arms: list[ExternalArm], n_films: int) -> str:
    """The console line on the films' shift (or why there is none to give)."""
    if not any(a.profiled for a in arms):
        return NO_PROFILE
    flagged = sum(bool(s) for s in film_shifts(arms, n_films))
    unprofiled = [a.arm for a in arms if not a.profiled]
    return shift_summary(flagged, n_films) + (f" (no training-film profile for {', '.join(unprofiled)})"
                                              if unprofiled else "")


def _fmt(value: float | None) -> str:
    """A number for table.csv, unrounded (the shortest text that reads back as the same float)."""
    return "" if value is None or np.isnan(value) else number_text(value)


def write_external(out_dir: Path, arms: list[ExternalArm], films: list[FilmRecord], reference: str | None,
                   title: str, n_boot: int) -> list[Path]:
    """table.md, table.csv (numbers), predictions.csv (every arm's probability per film), roc.png, and the
    calibration figures (calibration.png, decision_curve.png and .csv)."""
    from pneumollm.analysis.calibration import external_values, markdown_section, summarise_calibration
    from pneumollm.analysis.calibration_figures import write_calibration_outputs
    from pneumollm.analysis.figures import plot_roc

    patients = {f.patient_id for f in films}
    labels, film_patients = [f.label for f in films], [f.patient_id for f in films]
    calibrations = {a.arm: summarise_calibration(labels, a.probs, a.log_odds, film_patients, n_boot=n_boot)
                    for a in arms}
    rows = []
    for arm in arms:
        row = {"arm": arm.arm, "label": arm.label, "films": len(films), "patients": len(patients),
               "threshold": number_text(arm.threshold), **{m: _fmt(arm.metrics[m]) for m in METRICS},
               "pooled_auc_ci_low": _fmt(arm.auc.low), "pooled_auc_ci_high": _fmt(arm.auc.high)}
        for name, delta in (("delta_auc", arm.delta_auc), ("delta_avg", arm.delta_avg)):
            row.update({name: _fmt(delta.estimate if delta else None), f"{name}_ci_low": _fmt(delta.low if delta
                                                                                              else None),
                        f"{name}_ci_high": _fmt(delta.high if delta else None)})
        rows.append(row | {k: _fmt(v if v != "" else None) for k, v in external_values(calibrations[arm.arm]).items()})

    def write_csv(path: Path, columns: list[str] | tuple[str, ...], data: list[dict]) -> None:
        def writer(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                out = csv.DictWriter(handle, fieldnames=list(columns))
                out.writeheader()
                out.writerows(data)

        atomic_write(path, writer)

    write_csv(out_dir / "table.csv", CSV_COLUMNS, rows)
    # per arm: its P(class 1) (the column named by the arm) and that probability's log-odds (logit_<arm>)
    shifts = film_shifts(arms, len(films))
    per_film = [{"image_id": f.image_id, "patient_id": f.patient_id, "label": f.label,
                 **{a.arm: number_text(a.probs[i]) for a in arms},
                 **{f"logit_{a.arm}": number_text(a.log_odds[i]) for a in arms if a.log_odds is not None},
                 "shift": shifts[i]} for i, f in enumerate(films)]
    logit_columns = [f"logit_{a.arm}" for a in arms if a.log_odds is not None]
    write_csv(out_dir / "predictions.csv", ["image_id", "patient_id", "label", *[a.arm for a in arms],
                                            *logit_columns, "shift"], per_film)
    header = ["Arm", "Sens.", "Spec.", "Acc.", "AUC", "AVG", "AUC [95% CI]", "ΔAUC [95% CI]", "ΔAVG [95% CI]",
              "threshold"]
    def delta(value: Interval | None, is_ref: bool) -> str:
        return "ref" if is_ref else "–" if value is None else value.format()

    body = [[arm.label, *(f"{arm.metrics[m]:.2f}" for m in METRICS), arm.auc.format(),
             delta(arm.delta_auc, arm.arm == reference), delta(arm.delta_avg, arm.arm == reference),
             f"{arm.threshold:.3f}"] for arm in arms]
    names = common_class_names(a.class_names for a in arms)
    lines = [f"# {title}", "", markdown_table(header, body)]
    lines += ["", f"Class 1: {names[1]}, class 0: {names[0]}; the figures are those of {probability_name(names)}, "
                  "each computed from the predictions.csv beside this table (docs/tables.md).",
              "", f"{len(films)} external films of {len(patients)} patients, each arm the mean of its fold models' "
                  "probabilities, calls at each arm's threshold (the mean of its folds'). AUC with a 95% percentile "
                  f"bootstrap interval over patients ({n_boot} resamples); Δ = paired difference to the reference arm "
                  f"({reference or 'none'}) on the same films, paired bootstrap over patients. Figures in percent."]
    lines += markdown_section([(a.label, calibrations[a.arm]) for a in arms], what="on the external films")
    atomic_write_text(out_dir / "table.md", "\n".join(lines) + "\n")
    pseudo = [ArmRuns(a.arm, a.label, predictions=[Prediction(f.image_id, f.patient_id, 0, f.label, float(a.probs[i]))
                                                    for i, f in enumerate(films)]) for a in arms]
    summaries = [ArmSummary(a.arm, a.label, {}, {}, {}, a.metrics["auc"], 0, 0.0, len(films)) for a in arms]
    roc = plot_roc(pseudo, summaries, out_dir / "roc.png", f"{title}: ROC on the external films",
                   intervals=[a.auc for a in arms], n_boot=min(n_boot, 1000))
    calibration = write_calibration_outputs([(a.arm, a.label, calibrations[a.arm]) for a in arms], out_dir, title,
                                            names)
    return [out_dir / "table.md", out_dir / "table.csv", out_dir / "predictions.csv", roc, *calibration]


def external_validation(table_dir: Path, data: Path, out: Path | None = None, n_boot: int = 2000,
                        overrides: tuple[str, ...] = (), device: str = "cpu", num_folds: int = 5,
                        progress: bool = True) -> list[Path]:
    """Score every study of ``table_dir`` (one per training cohort) on the external manifest ``data``; writes
    ``<study>/external/<cohort>/`` (or ``out``) and returns the folders written."""
    listing = read_manifest(data)
    for skipped in listing.skipped:
        say(f"[yellow]external film left out: {skipped.image_id}: {skipped.reason}")
    if not listing.records:
        raise AggregationError(f"{data}: no usable external films")
    cohort = data_slug(str(data))
    studies = find_studies(table_dir)
    written, left_out = [], []
    for study in studies:
        runs_dir = study / RUNS_SUBDIR if (study / RUNS_SUBDIR).is_dir() else study
        try:
            arms, films, reference = score_arms(runs_dir, listing.records, n_boot, overrides, device, num_folds,
                                                progress)
        except AggregationError as err:  # one unfinished study must not keep the others from being scored
            left_out.append(f"{study}: {err}")
            say(f"[yellow]study {study} left out: {err}")
            continue
        say(f"{study.name}: {shift_line(arms, len(films))}")
        target = (out / study.name if out is not None and len(studies) > 1 else out) or study / "external" / cohort
        with output_set(target, "external") as stage:
            names = common_class_names(a.class_names for a in arms)
            title = (f"{table_dir.name} ({study.name}) on {cohort}, {size_words(a.size for a in arms)}, "
                     f"{class_words(names)}")
            write_external(stage, arms, films, reference, title, n_boot)
        written.append(target)
    if not written:
        found = "; ".join(left_out) if left_out else f"{table_dir}: no runs found (no */fold*/metrics.json)"
        raise AggregationError(f"no study of {table_dir} could be scored: {found}")
    return written
