"""The model card (``README.md``) of an export, written from its ``export.json`` record alone.

A trained arm's card has one section per thing a reader of a diagnostic model looks for, named after the reporting
items (TRIPOD+AI, CLAIM) it answers: intended use and limitations, the model, data sources and eligibility, data
partitions, model selection and output, discrimination, calibration, external validation and subgroups, and how
to use it; the numbers come from the record's ``card`` facts (``inference.card_facts``). An imported checkpoint's
card (``pneumollm-import-reference``) says where its weights came from and that this suite did not validate them.
docs/model_card.md describes every section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pneumollm.data.targets import BINARY, BINARY_CLASSES, MULTICLASS
from pneumollm.training.calibration_metrics import CALIBRATION_METRICS
from pneumollm.training.fold_metrics import HEADLINE
from pneumollm.utils.markdown import markdown_table

METRIC_KEYS = tuple(f"test/{name}" for name in HEADLINE)  # the folds' figures export.json keeps
CALIBRATION_NAMES = {"brier": "Brier", "ece": "ECE", "calibration_slope": "slope",
                     "calibration_intercept": "intercept"}
CALIBRATION_DIGITS = {"brier": 3, "ece": 3, "calibration_slope": 2, "calibration_intercept": 2}
TINY_NOTE = ("**Tiny size**: small randomly initialised stand-ins for the paper's models, a pipeline check; its "
             "figures are not evidence about the method.")
RESEARCH_ONLY = ("**Research use only.** Not a medical device: not cleared or approved for diagnosis, screening or "
                 "any clinical decision, and not validated prospectively.")
# The card's sections, in order (docs/model_card.md; the tests check the card has each)
SECTIONS = ("Intended use and limitations", "Model description", "Data sources and eligibility", "Data partitions",
            "Model selection and output", "Model performance: discrimination", "Model performance: calibration",
            "External validation", "Subgroup performance", "How to use it")


def model_card(record: dict[str, Any]) -> str:
    """The export's README: what it is, where its weights come from, how it was validated, how to load it."""
    imported = record.get("imported")
    lines = _imported_card_lines(record) if imported else trained_card_lines(record)
    lines += usage_lines(not imported or imported["base_weights_checked"])
    if record.get("training_films"):
        lines += ["", "The predictions' `shift` column names films that look unlike the training films (their "
                      "profile is `training_films` in `export.json`: native sizes, file formats, input intensities)."]
    return "\n".join(lines) + "\n"


def base_weight_lines(record: dict[str, Any]) -> list[str]:
    """One Markdown bullet per frozen backbone: its hub id or folder, or its seeded random build."""
    lines = []
    for part, base in record["base_weights"].items():
        source = base.get("name_or_path") if base.get("pretrained") else f"random {base.get('architecture')} " \
                 f"(seed {base.get('init_seed')})"
        lines.append(f"- {part}: `{source}`")
    return lines


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: Any, digits: int = 2) -> str:
    """A figure as the card shows it; '–' where it does not exist."""
    return "–" if _missing(value) else f"{float(value):.{digits}f}"


def interval(estimate: Any, low: Any, high: Any, digits: int = 2) -> str:
    """``estimate [low, high]``; the estimate alone where the interval does not exist; '–' without an estimate."""
    if _missing(estimate):
        return "–"
    if _missing(low) or _missing(high):
        return number(estimate, digits)
    return f"{float(estimate):.{digits}f} [{float(low):.{digits}f}, {float(high):.{digits}f}]"


def trained_card_lines(record: dict[str, Any]) -> list[str]:
    """The card of an arm trained by this suite, section by section (``SECTIONS``, but the last)."""
    facts = record.get("card") or {}
    names = tuple(record.get("class_names") or BINARY_CLASSES)
    lines = [f"# {record['label'] or record['arm']} ({record['arm']}): a PneumoLLM suite model", "",
             f"Exported on {record['created']} by pneumollm {record['suite_version']} from the study "
             f"`{record['experiment']}` (size={record['size']}) on the cohort `{record['cohort']}`."]
    lines += intended_use_lines(record, facts, names)
    lines += model_description_lines(record, names)
    lines += data_lines(facts.get("data"), names)
    lines += partition_lines(facts.get("split"), facts.get("protocol"), names)
    lines += selection_lines(record, facts.get("protocol"), names)
    lines += discrimination_lines(record, facts.get("performance"), names)
    lines += calibration_lines(facts.get("performance"), facts.get("protocol"))
    lines += external_lines(facts.get("external") or [])
    lines += subgroup_lines(facts.get("subgroups") or {}, names)
    return lines


def intended_use_lines(record: dict[str, Any], facts: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    negative, positive = names
    task = facts.get("task", BINARY)
    what = {BINARY: f"P({positive}) of a chest film, against {negative}",
            MULTICLASS: f"the stage of a chest film and P(any {positive}), the sum of the stages above the first"
            }.get(task, f"the findings of a chest film, P({positive}) being the primary finding's")
    lines = ["", "## Intended use and limitations", "", RESEARCH_ONLY, "",
             f"It estimates {what} (class words: `data.class_names` = {negative} / {positive}). The figures below "
             f"are those of the cohort `{record['cohort']}` and of any external cohort listed under External "
             "validation; they say nothing about films from other sites, scanners or populations. Films unlike the "
             "training films are flagged (the `shift` column of the predictions), never corrected."]
    data = facts.get("data") or {}
    if data.get("source") == "demo":
        lines += ["", "**Synthetic cohort**: the demo's generated films (docs/demo_cohort.md), not radiographs of "
                      "patients."]
    if record["size"] == "tiny":
        lines += ["", TINY_NOTE]
    return lines


def model_description_lines(record: dict[str, Any], names: Sequence[str]) -> list[str]:
    negative, positive = names
    folds = record["folds"]
    trainable = [f.get("trainable_params") for f in folds if f.get("trainable_params") is not None]
    weights = f"`fold<k>.safetensors`{f', {trainable[0]:,} parameters' if trainable else ''}"
    base = base_weight_lines(record)
    return ["", "## Model description", "",
            f"A classifier of chest films into {positive} (class 1) and {negative} (class 0): for each film it "
            f"gives P({positive}) (`prob`), its log-odds (`logit`) and the call `pred` = P({positive}) above "
            "the threshold.", "",
            f"An ensemble of {len(folds)} fold models (the mean of their probabilities): each fold's trainable "
            + (f"weights ({weights}) on top of frozen base weights that are not included:" if base else
               f"weights ({weights}), the whole model (no frozen base weights)."), *base]


def data_lines(data: Mapping[str, Any] | None, names: Sequence[str]) -> list[str]:
    lines = ["", "## Data sources and eligibility", ""]
    if not data:
        return [*lines, "Not recorded (an export made before model cards listed the data)."]
    negative, positive = names
    source = {"manifest": f"the manifest `{data.get('source_name')}`",
              "dicom_folder": f"the DICOM folder `{data.get('source_name')}` with its labels CSV",
              "demo": _demo_words(data)}.get(data.get("source"), f"a `{data.get('source')}` source")
    modalities = "/".join(data.get("allowed_modalities") or []) or "any"
    lines += [f"Cohort `{data.get('cohort')}`, listed by {source}. A film is used when it decodes, a DICOM film's "
              f"modality is one of {modalities}, its shorter side is at least {data.get('min_film_size')} pixels, "
              "and it has a label; the others are skipped with the reason. The labels (the reference standard) are "
              "the source's label column, taken as given.", ""]
    used = (f"{data['films']} films of {data['patients']} patients were used ({data['positive_films']} {positive} / "
            f"{data['films'] - data['positive_films']} {negative} films; {data['positive_patients']} {positive} / "
            f"{data['patients'] - data['positive_patients']} {negative} patients), each tested once")
    report = data.get("report")
    if report is None:
        return [*lines, used + ". The prepared cohort's `preprocess_report.csv` was not found when this export was "
                        "made: the skipped films are not recorded here."]
    lines.append(f"{report['films_listed']} films listed, {report['films_used']} usable, "
                 f"{report['films_skipped']} skipped. {used}.")
    if report["skipped_reasons"]:
        lines += ["", markdown_table(["skipped because", "films"], report["skipped_reasons"].items(),
                                     align=["left", "right"])]
    if report.get("crop"):
        lines += ["", "Lung crop of the used films: " + ", ".join(f"{n} {status}" for status, n in
                                                                   report["crop"].items()) + "."]
    return lines


def _demo_words(data: Mapping[str, Any]) -> str:
    demo = data.get("demo") or {}
    return (f"the synthetic demo cohort the suite generates ({demo.get('n_patients', '?')} patients, seed "
            f"{demo.get('seed', '?')}, signal strength {demo.get('signal_strength', '?')})")


def _split_cell(split: Mapping[str, int] | None) -> str:
    return "–" if not split else f"{split['films']} ({split['patients']})"


def partition_lines(split: Mapping[str, Any] | None, protocol: Mapping[str, Any] | None,
                    names: Sequence[str]) -> list[str]:
    lines = ["", "## Data partitions", ""]
    if not split:
        return [*lines, "Not recorded (an export made before model cards listed the split)."]
    uses = ["select the checkpoint"]
    if protocol and "validation" in protocol.get("threshold_modes", []):
        uses.append("choose the threshold")
    if protocol and any(m != "none" for m in protocol.get("calibration", [])):
        uses.append("fit the recalibration")
    lines.append(f"{split['num_folds']}-fold cross-validation at the patient level: a patient's films are all in "
                 f"one fold; the folds are stratified on {split['stratified_on']} (folds seed "
                 f"{split.get('folds_seed')}). In each fold, {split['val_fraction']:.0%} of the training patients "
                 f"(stratified the same way) are validation patients, used to {_and(uses)}; the test fold is used "
                 "once, for the figures below.")
    if split.get("selection_split") == "test_fold_reference":
        lines += ["", "**Selected on the test fold** (`data.selection_split=test_fold_reference`, the reference "
                      "code's protocol): the figures below are optimistic."]
    if split.get("folds_exported", split["num_folds"]) != split["num_folds"]:
        lines += ["", f"Only {split['folds_exported']} of the {split['num_folds']} folds are in this export."]
    positive = names[1]
    rows = [[f.get("fold"), _split_cell(f.get("train")), _split_cell(f.get("val")), _split_cell(f.get("test")),
             (f.get("test") or {}).get("positives", "–")] for f in split.get("per_fold", [])]
    lines += ["", markdown_table(["fold", "training films (patients)", "validation films (patients)",
                                  "test films (patients)", f"test {positive} films"], rows, align="right")]
    return lines


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _recalibration_cell(fold: Mapping[str, Any]) -> str:
    recalibration = fold.get("calibration")
    if not recalibration:
        return "none"
    if recalibration["method"] == "temperature":
        return f"temperature T = {recalibration['temperature']:.3f}"
    return f"platt a = {recalibration['a']:.3f}, b = {recalibration['b']:.3f}"


def selection_lines(record: dict[str, Any], protocol: Mapping[str, Any] | None, names: Sequence[str]) -> list[str]:
    positive = names[1]
    lines = ["", "## Model selection and output", ""]
    if protocol:
        best = f"the epoch with the best validation `{protocol.get('monitor')}` ({protocol.get('mode')})"
        chosen = " or ".join(best if s == "best" else "the last epoch" for s in protocol.get("selection", []))
        threshold = {"fixed": "a fixed cut-off on the probability",
                     "validation": "the cut-off maximising Youden's J on the fold's validation patients"}
        recalibration = {"none": "none (the model's own probabilities)",
                         "temperature": "temperature scaling (log-odds / T) fitted on the fold's validation patients",
                         "platt": "Platt scaling (a · log-odds + b) fitted on the fold's validation patients"}
        lines += [f"- Checkpoint: {chosen}, of up to {protocol.get('max_epochs')} epochs.",
                  "- Threshold: " + "; ".join(threshold.get(m, m) for m in protocol.get("threshold_modes", [])) + ".",
                  "- Recalibration: " + "; ".join(recalibration.get(m, m) for m in protocol.get("calibration", []))
                  + "."]
        if any(m != "none" for m in protocol.get("calibration", [])):
            chosen_on = (" (the validation threshold is chosen on the recalibrated probabilities)"
                         if "validation" in protocol.get("threshold_modes", []) else "")
            lines.append("  It is fitted at the selected checkpoint, never on the test fold, and applied before "
                         "anything else: `prob`, the threshold and every figure below are the recalibrated "
                         f"P({positive}){chosen_on}.")
    lines += ["", f"Output per film: `prob` = P({positive}) (the mean of the fold models'), `logit` (its log-odds) and "
                  f"`pred` = 1 when `prob` is above the ensemble's threshold (the mean of the folds').", "",
              markdown_table(["fold", "selected epoch", "threshold", "recalibration"],
                             ([f["fold"], "–" if f.get("selected_epoch") is None else f["selected_epoch"],
                               f"{f['threshold']:.3f} ({f['threshold_mode']})", _recalibration_cell(f)]
                              for f in record["folds"]), align=["right", "right", "right", "left"])]
    return lines


def discrimination_lines(record: dict[str, Any], performance: Mapping[str, Any] | None,
                         names: Sequence[str]) -> list[str]:
    negative, positive = names
    folds = record["folds"]
    lines = ["", "## Model performance: discrimination", "",
             "Each fold model tested once on its held-out fold (percent). Sens.: the share of "
             f"{positive} films called {positive}; Spec.: the share of {negative} films called {negative}; AVG: "
             "the mean of the four.", "",
             markdown_table(["fold", "Sens.", "Spec.", "Acc.", "AUC", "AVG", "threshold"],
                            ([f["fold"], *(f"{f['metrics'].get(k, float('nan')):.2f}" for k in METRIC_KEYS),
                              f"{f['threshold']:.3f} ({f['threshold_mode']})"] for f in folds), align="right")]
    if performance:
        d, auc = performance["discrimination"], performance["auc"]
        lines += ["", f"Pooled out-of-fold ({performance['films']} films of {performance['patients']} patients, each "
                      f"called at its fold's threshold): Sens. {number(d['sensitivity'])}, Spec. "
                      f"{number(d['specificity'])}, Acc. {number(d['accuracy'])}, AUC "
                      f"{interval(auc['estimate'], auc['ci_low'], auc['ci_high'])} (95 % percentile bootstrap over "
                      f"patients, {performance['bootstrap']} resamples)."]
    elif record.get("pooled_auc"):
        p = record["pooled_auc"]
        lines += ["", f"Pooled out-of-fold AUC {interval(p['estimate'], p['ci_low'], p['ci_high'])} (95 % "
                      "percentile bootstrap over patients)."]
    return lines


def calibration_lines(performance: Mapping[str, Any] | None, protocol: Mapping[str, Any] | None) -> list[str]:
    lines = ["", "## Model performance: calibration", ""]
    if not performance:
        return [*lines, "Not recorded (no out-of-fold predictions were found when this export was made)."]
    rows = []
    for metric in CALIBRATION_METRICS:
        c, digits = performance["calibration"][metric], CALIBRATION_DIGITS[metric]
        rows.append([CALIBRATION_NAMES[metric], interval(c["estimate"], c["ci_low"], c["ci_high"], digits),
                     f"{number(c['fold_mean'], digits)} ± {number(c['fold_std'], digits)}"])
    recalibrated = protocol and any(m != "none" for m in protocol.get("calibration", []))
    lines += [markdown_table(["figure", "pooled [95% CI]", "mean ± std over folds"], rows,
                             align=["left", "right", "right"]), "",
              "Of the pooled out-of-fold P(class 1)" + (" after recalibration" if recalibrated else "") +
              f", with the same patient bootstrap ({performance['bootstrap']} resamples). Brier: mean (P − label)², "
              "ECE: expected calibration error over 10 equal-width bins (both 0-1, 0 is best); slope: of the "
              "logistic regression of the label on the log-odds (1 is ideal, below 1: predictions too extreme); "
              "intercept: calibration-in-the-large (0 is ideal, above 0: predictions too low on average). '–': no "
              "estimate (the log-odds separate the classes). Definitions: docs/tables.md."]
    return lines


CALIBRATION_HEADERS = tuple(f"{CALIBRATION_NAMES[m]} [95% CI]" for m in CALIBRATION_METRICS)


def external_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["", "## External validation", ""]
    if not rows:
        return [*lines, "None in the study folder when this export was made: `pneumollm-external TABLE_DIR "
                        "COHORT.csv` scores the arm on another cohort (docs/prediction.md); export again to show it."]
    body = [[r["cohort"], number(r.get("films"), 0), number(r.get("patients"), 0),
             *(number(r.get(m)) for m in ("sensitivity", "specificity", "accuracy")),
             interval(r.get("auc"), r.get("pooled_auc_ci_low"), r.get("pooled_auc_ci_high")),
             *(interval(r.get(m), r.get(f"{m}_ci_low"), r.get(f"{m}_ci_high"), CALIBRATION_DIGITS[m])
               for m in CALIBRATION_METRICS)] for r in rows]
    return [*lines, markdown_table(["cohort", "films", "patients", "Sens.", "Spec.", "Acc.", "AUC [95% CI]",
                                    *CALIBRATION_HEADERS], body, align="right"), "",
                    "The ensemble (the mean of the fold models' probabilities) on each external cohort's films, "
                    "called at the ensemble's threshold; percent, calibration as above; 95 % patient-bootstrap "
                    "intervals (`external/<cohort>/table.csv` of the study)."]


def subgroup_lines(groups: Mapping[str, Sequence[Mapping[str, Any]]], names: Sequence[str]) -> list[str]:
    lines = ["", "## Subgroup performance", ""]
    if not groups:
        return [*lines, "None in the study folder when this export was made: `pneumollm-aggregate STUDY --by COLUMN` "
                        "splits the results by one of the cohort's own columns (site, scanner, sex, age band...); "
                        "export again to show it. The suite checks no subgroup by itself."]
    for column, rows in groups.items():
        body = [[r["value"], number(r.get("films"), 0), number(r.get("patients"), 0),
                 number(r.get("positive_films"), 0), *(number(r.get(m)) for m in ("sensitivity", "specificity",
                                                                                   "accuracy")),
                 interval(r.get("pooled_auc"), r.get("pooled_auc_ci_low"), r.get("pooled_auc_ci_high"))]
                for r in rows]
        lines += [f"By `{column}` (`by_{column}.csv` of the study):", "",
                  markdown_table([column, "films", "patients", f"{names[1]} films", "Sens.", "Spec.", "Acc.",
                                  "AUC [95% CI]"], body, align="right"), ""]
    return [*lines, "Pooled out-of-fold films with each value, each called at its fold's threshold; percent; AUC with "
                    "a 95 % patient-bootstrap interval ('–': a class is absent)."]


REFERENCE_ARGS_SHOWN = ("multiscale", "RPO_K", "adapter_dim", "hidden_proj", "adapter_type", "visual_adapter_type",
                        "bits", "llm_model")


def _imported_card_lines(record: dict[str, Any]) -> list[str]:
    """The card of weights trained elsewhere (``record['imported']``, written by ``pneumollm-import-reference``)."""
    imported, folds = record["imported"], record["folds"]
    checkpoints = imported["checkpoints"]
    negative, positive = tuple(record.get("class_names") or BINARY_CLASSES)
    lines = [f"# {record['label'] or record['arm']} ({record['arm']}): the authors' published weights, imported", "",
             f"Imported on {record['created']} by pneumollm {record['suite_version']} from {imported['source']}: "
             f"**{imported['note']}** ({record['size']} size).", "",
             "## Intended use and limitations", "", RESEARCH_ONLY, "",
             f"It estimates P({positive}) of a chest film, against {negative}. Its performance was not measured by "
             "this suite (Model performance below); measure it on your cohort before relying on any figure.", "",
             "## Model description", "",
             f"{len(folds)} model(s), one per imported checkpoint (`fold<k>.safetensors`; several are averaged as an "
             "ensemble): the paper's PneumoLLM with the authors' trained adapters, CMTE, neck and head, on top of "
             "frozen base weights that are not included:", *base_weight_lines(record), ""]
    if imported["base_weights_checked"]:
        lines.append("The base weights were fingerprinted at import from the sources above, and later loads are "
                     "refused when they differ. The reference recorded no fingerprints itself: that these are the "
                     "base weights the authors trained on is assumed, not checked.")
    else:
        lines.append("**Base weights unchecked**: the reference's checkpoint records no fingerprints of the base "
                     "weights it was trained on, so loading this folder cannot tell whether the CLIP and LLaMA "
                     "weights it finds are the authors' (OpenAI's CLIP ViT-L/14 and Meta's LLaMA-7B). "
                     "`pneumollm-import-reference --fingerprint` loads them at import and records their fingerprints, "
                     "so that later loads are checked against those.")
    lines += ["", "## Where the weights came from", "",
              markdown_table(["fold", "file", "sha256", "epoch"],
                             ([c["fold"], f"`{c['file']}`", f"`{c['sha256']}`", c.get("epoch", "")]
                              for c in checkpoints)),
              "", "Settings read from each checkpoint's `args` (all of them are in `export.json`):", "",
              markdown_table(["fold", *REFERENCE_ARGS_SHOWN],
                             ([c["fold"], *(c["args"].get(k, "") for k in REFERENCE_ARGS_SHOWN)] for c in checkpoints))]
    defaulted = sorted({k for c in checkpoints for k in c.get("defaulted_args", [])})
    if defaulted:
        lines += ["", f"Missing from the args and taken from the reference's defaults: {', '.join(defaulted)}."]
    lines += ["", "## The reference's quirks, reproduced", "",
              *(f"- `{q['setting']}` = {q['value']}: {q['why']}" for q in imported["quirks"])]
    prep = record["preprocessing"]
    lungs = str(prep["lungs"].get("_target_", "?")).rpartition(".")[2]
    lines += ["", "## Data sources and eligibility", "",
              f"Films are cropped to the lungs by `{lungs}` (margin {prep['margin']}) and resized to "
              f"{prep['image_size']} px. The reference cropped them to the bounding rectangle of HybridGNet lung "
              "masks (CheXmask's pipeline) before resizing to 224 px, which `lungs=chexmask` (precomputed masks) "
              "or `lungs=unet` at import come closer to. The authors' training data are not described by the "
              "checkpoint.",
              "", "## Model selection and output", "",
              "Threshold 0.5 on P(class 1), no recalibration (the checkpoint records neither).",
              "", "## Model performance", "",
              "Not by this suite. The reference kept the epoch with the best average of sensitivity, specificity, "
              "accuracy and AUC on the split it then reported, so the published figures of these weights are "
              "optimistic. Compare them with arms retrained on your cohort (docs/reference_import.md)."]
    if record["size"] == "tiny":
        lines += ["", TINY_NOTE]
    return lines


def usage_lines(checked: bool = True) -> list[str]:
    """The model card's "How to use it" section; ``checked``: whether loads check the base weights."""
    check = ("the frozen base weights are checked against the fingerprints recorded at training time and refused "
             "when they differ." if checked else "the frozen base weights are **not** checked: no fingerprints of "
             "them were recorded.")
    return ["", "## How to use it", "", "```bash", "pneumollm-predict THIS_FOLDER films/ --out predictions.csv",
            "# base weights elsewhere than on the training machine:",
            "pneumollm-predict THIS_FOLDER films/ --out predictions.csv \\",
            "    --set model.encoder.name_or_path=/models/clip model.llm.name_or_path=/models/llama-7b", "```", "",
            f"Films are preprocessed as in training (`export.json`, `preprocessing`); {check} A recalibrated "
            "model's probabilities are recalibrated there too (`calibration` of each fold in `export.json`)."]
