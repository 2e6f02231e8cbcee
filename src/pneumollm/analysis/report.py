"""Aggregate one table's sweep: the table files, its figures, and an ``aggregate`` run in W&B."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from pneumollm.analysis.collect import AggregationError, ArmRuns, collect_runs, run_thresholds, split_complete
from pneumollm.analysis.figures import (
    Call,
    PanelFilm,
    plot_film_panel,
    plot_metric_curve,
    plot_roc,
    plot_tsne,
    select_panel_films,
)
from pneumollm.analysis.summary import ArmSummary
from pneumollm.analysis.tables import (
    TableRow,
    build_rows,
    has_paper_numbers,
    load_paper_results,
    row_cells,
    write_table,
)
from pneumollm.analysis.task_figures import plot_confusion_matrices, plot_output_rocs
from pneumollm.analysis.wording import class_words, common_class_names, probability_name, size_words
from pneumollm.data.preprocess import read_cohort_index
from pneumollm.data.targets import BINARY_CLASSES
from pneumollm.models.registry import row_names
from pneumollm.models.row_size import RowSize
from pneumollm.paths import conf_dir
from pneumollm.training.run_folder import CONFIG_FILE, FEATURES_FILE
from pneumollm.utils.console import make_console
from pneumollm.utils.io import atomic_write_json, sha256_file, sha256_json
from pneumollm.utils.quiet import quiet_wandb


@dataclass
class TableReport:
    """What aggregating a table produced."""

    table_md: Path
    table_csv: Path
    figures: list[Path] = field(default_factory=list)
    incomplete: dict[str, list[str]] = field(default_factory=dict)
    cells: list[list[str]] = field(default_factory=list)
    has_paper: bool = True
    config: DictConfig | None = None  # the resolved config of one of the table's runs

    def moved(self, old: Path, new: Path) -> TableReport:
        """The same report after its files were moved from folder ``old`` to folder ``new``."""
        def move(path: Path) -> Path:
            return new / path.relative_to(old)

        return replace(self, table_md=move(self.table_md), table_csv=move(self.table_csv),
                       figures=[move(f) for f in self.figures])


def _run_config(arm: ArmRuns) -> DictConfig:
    """The resolved config of the arm's first fold (empty when the run wrote none)."""
    path = arm.run_dirs[min(arm.run_dirs)] / CONFIG_FILE
    return OmegaConf.load(path) if path.is_file() else OmegaConf.create({})


def _curve_values(arms: dict[str, ArmRuns], configs: dict[str, DictConfig], curve_key: str) -> dict[str, float]:
    """Each arm's x value on the figure's curve (e.g. m for Fig. 6b), read from its config."""
    values = {}
    for name in arms:
        value = OmegaConf.select(configs[name], curve_key)
        if value is None:
            raise AggregationError(f"{name}: its config has no {curve_key!r}, the x value of this figure's curve")
        values[name] = float(value)
    return values


def _order(arms: dict[str, ArmRuns], table: str, curve: dict[str, float] | None) -> list[ArmRuns]:
    if curve:
        return sorted(arms.values(), key=lambda a: curve[a.arm])
    paper_order = [r.arm for r in load_paper_results() if r.table == table]
    rank = {name: i for i, name in enumerate(dict.fromkeys([*paper_order, *row_names()]))}
    return sorted(arms.values(), key=lambda a: (rank.get(a.arm, len(rank)), a.arm))


def _curve_of(arms: dict[str, ArmRuns], configs: dict[str, DictConfig]) -> dict[str, float] | None:
    """Each arm's x value on the figure's curve (config key ``experiment.curve``); None for a table."""
    curve_key = OmegaConf.select(next(iter(configs.values())), "experiment.curve")
    return _curve_values(arms, configs, curve_key) if curve_key else None


def table_arm_order(arms: dict[str, ArmRuns], table: str) -> list[str]:
    """The arm ids in the order ``aggregate_table`` lists them: along the figure's curve (e.g. m for Fig. 6b),
    else the paper's row order, arms the paper lacks last by id. Pass it to ``write_summary(order=...)`` so the
    summary lists the arms as the table does."""
    if not arms:
        return []
    configs = {name: _run_config(arm) for name, arm in arms.items()}
    curve = _curve_of(arms, configs)
    return [a.arm for a in _order(arms, table, curve)]


def _features(arm: ArmRuns, fold: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The head-input features and labels of one fold's test films (one model), None when not saved."""
    run_dir = arm.run_dirs.get(fold)
    path = run_dir / FEATURES_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    with np.load(path) as data:
        return data["features"], data["labels"]


def tsne_features(arms: list[ArmRuns],
                  fold: int | None = None) -> tuple[int | None, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(fold, label -> features of that fold's test films) for the t-SNE figure: one model per arm.

    ``fold``: the fold to show; by default the lowest fold with saved features of every arm that saved any.
    """
    if fold is None:
        with_features = [{f for f in a.run_dirs if (a.run_dirs[f] / FEATURES_FILE).is_file()} for a in arms]
        with_features = [folds for folds in with_features if folds]
        common = set.intersection(*with_features) if with_features else set()
        candidates = common or set().union(*with_features)
        fold = min(candidates) if candidates else None
    if fold is None:
        return None, {}
    return fold, {a.label: f for a in arms if (f := _features(a, fold)) is not None}


def _cohort_files(arms: list[ArmRuns]) -> dict[str, Path]:
    """image_id -> preprocessed image of the first arm whose prepared cohort folder is readable."""
    for arm in arms:
        cohort = arm.folds[min(arm.folds)].cohort_folder
        if not cohort:
            continue
        try:
            return {film.image_id: Path(cohort) / film.file for film in read_cohort_index(cohort)}
        except FileNotFoundError:
            continue
    return {}


def _panel_films(arms: list[ArmRuns], max_films: int = 8) -> tuple[list[PanelFilm], dict[str, dict[str, Call]]]:
    """The films of the panel, across folds and including each arm's errors at its runs' thresholds, with every
    arm's call on them (arm label -> image_id -> call); ([], {}) when no prepared cohort is readable."""
    files = _cohort_files(arms)
    if not files:
        return [], {}
    calls: dict[str, dict[str, Call]] = {}
    films: dict[str, tuple[int, int]] = {}
    for arm in arms:
        thresholds = run_thresholds(arm)
        calls[arm.label] = {p.image_id: Call(p.prob, thresholds.get(p.fold, 0.5)) for p in arm.predictions}
        films |= {p.image_id: (p.label, p.fold) for p in arm.predictions if p.image_id in files}
    chosen = select_panel_films(films, calls, max_films=max_films)
    return [PanelFilm(image_id, label, fold, files[image_id] if files[image_id].is_file() else None)
            for image_id, label, fold in chosen], calls


def _count_cache_path() -> Path:
    """``$PNEUMOLLM_CACHE`` (default ``$XDG_CACHE_HOME/pneumollm``, i.e. ``~/.cache/pneumollm``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pneumollm"
    return Path(os.environ.get("PNEUMOLLM_CACHE") or default) / "full_size_rows.json"


def _count_key(arm: str) -> str:
    """What an arm's full-size count depends on: its name, every config, the model code."""
    models = Path(__file__).resolve().parents[1] / "models"
    files = sorted([*conf_dir().rglob("*.yaml"), *models.rglob("*.py")])
    return sha256_json({"arm": arm, "files": {str(f.name): sha256_file(f) for f in files}})[:24]


def _full_size_or_none(console: Console) -> Callable[[str], RowSize | None]:
    """The meta-device full-size counts of an arm (``RowSize``); counts that cannot be made are left out, with a
    warning.

    Counts are kept in ``~/.cache/pneumollm/full_size_rows.json`` keyed by the configs and the model code,
    so a later aggregation neither imports torch nor builds models (a few seconds per table otherwise).
    """
    path = _count_cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}

    def count(arm: str) -> RowSize | None:
        key = _count_key(arm)
        if key in cache:
            return None if cache[key] is None else RowSize.from_dict(cache[key])
        try:
            from pneumollm.models.arm_param_count import full_size_row

            value = full_size_row(arm)
        except Exception as err:  # a missing count must not stop the table
            console.print(f"[yellow]no full-size parameter count for {arm}: {err}[/yellow]", highlight=False)
            return None
        cache[key] = None if value is None else value.as_dict()
        with contextlib.suppress(OSError):  # an unwritable cache only costs time
            atomic_write_json(path, cache)
        return value

    return count


def threshold_note(arms: list[ArmRuns]) -> str:
    """Which cut-off on P(class 1) the sensitivity, specificity and accuracy of each arm were computed at."""
    fixed, chosen = set(), []
    for arm in arms:
        thresholds = run_thresholds(arm)
        if any(arm.folds[f].threshold_mode == "validation" for f in arm.folds):
            values = np.array(list(thresholds.values()))
            chosen.append(f"{arm.label} {values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}")
        else:
            fixed.update(thresholds.values())
    parts = []
    if fixed:
        parts.append("fixed at " + " / ".join(f"{t:g}" for t in sorted(fixed)) + (" for the other arms" if chosen
                                                                                   else " for every arm"))
    if chosen:
        parts.append("chosen per fold on its validation patients by Youden's J (mean ± std over folds): "
                     + "; ".join(chosen))
    names = common_class_names(a.class_names for a in arms)
    return f"Threshold on {probability_name(names)} for Sens./Spec./Acc.: " + "; ".join(parts) + "."


def aggregate_table(runs_dir: str | Path, out_dir: str | Path, table: str, reference: str | None = None,
                    num_folds: int = 5, partial: bool = False, n_boot: int = 2000, title: str | None = None,
                    use_wandb: bool = True, console: Console | None = None,
                    arms: dict[str, ArmRuns] | None = None, tsne_fold: int | None = None,
                    summaries: dict[str, ArmSummary] | None = None) -> TableReport:
    """Write ``table.md``/``table.csv`` and the figures of ``table`` from its runs under ``runs_dir``.

    ``arms``: the runs already collected from ``runs_dir`` (read again when not given). The arms are listed in
    ``table_arm_order``. ``tsne_fold``: the fold whose models the t-SNE figure shows (default: the lowest).
    ``summaries``: the arms' summaries already made from the same runs with ``n_boot`` resamples.
    """
    console = console or make_console()
    arms = collect_runs(runs_dir) if arms is None else arms
    complete, incomplete = split_complete(arms, num_folds, partial, f"{table} ({runs_dir})")
    configs = {name: _run_config(arm) for name, arm in complete.items()}
    sample_config = next(iter(configs.values()))
    curve = _curve_of(complete, configs)
    ordered = _order(complete, table, curve)
    reference = reference or OmegaConf.select(sample_config, "experiment.reference")
    if reference and reference not in complete:
        console.print(f"[yellow]reference arm {reference!r} is not complete: no paired differences[/yellow]")
        reference = None
    rows = build_rows(ordered, reference, table, n_boot=n_boot, full_size=_full_size_or_none(console),
                      summaries=summaries)
    out_dir = Path(out_dir)
    size = OmegaConf.select(sample_config, "size_name", default="?")
    title = title or table_title(table, ordered, num_folds)
    names = common_class_names(a.class_names for a in ordered)
    notes = [
        f"Class 1: {names[1]}, class 0: {names[0]} (data.class_names); every figure is computed from the runs' "
        "predictions.csv files (docs/tables.md).",
        "Figures in percent: mean ± sample std (ddof=1) over folds; pooled AUC over all out-of-fold predictions "
        f"with a 95% percentile bootstrap interval resampling patients ({n_boot} resamples); Δ = paired "
        f"difference to the reference arm ({reference or 'none'}) over folds with a 95% t interval.",
        "L-para: trainable parameters of our runs; full-size L-para: the same row's configuration "
        "(conf/arm/) at the paper's size, counted on the meta device (command-line overrides not reflected); "
        "full-size frozen: that configuration's frozen parameters, and their weights in GB (10^9 bytes; no "
        "activations or training state) with every frozen backbone in bf16, and with the LLM trunk's linear layers "
        "in nf4 (llm.quantization=nf4, double quantisation; '–': no trunk to quantise); "
        "Mem: peak memory of the run (GPU allocated on CUDA, else the "
        "process's peak RSS). " + _paper_note(table, rows),
    ]
    if size == "tiny":
        epochs = OmegaConf.select(sample_config, "trainer.max_epochs")
        notes.append(f"Tiny size: randomly initialised models of reduced width and depth on CPU, {epochs} epochs "
                     "(each arm's reduction: docs/arms.md, 'Tiny sizes'; L-para shows the tiny count); they "
                     "exercise the pipeline and are not comparable with the paper's numbers.")
    notes.append(threshold_note(ordered))
    tasks = {a.task for a in ordered} - {"binary"}
    if tasks:
        what = "stage >= 1, P = the sum of the stage >= 1 probabilities" if "multiclass" in tasks else \
            "the primary finding, P = its sigmoid"
        notes.append(f"{'Staged' if 'multiclass' in tasks else 'Multi-label'} runs: Sens./Spec./Acc./AUC/AVG are "
                     f"for any {names[1]} ({what}); the paper's columns report its binary task. The task's own "
                     "figures follow the notes.")
    if incomplete:
        notes.append("Incomplete arms left out: " + "; ".join(p for ps in incomplete.values() for p in ps))
    md_path, csv_path = write_table(rows, out_dir, title, notes)
    report = TableReport(md_path, csv_path, incomplete=incomplete, cells=[row_cells(r) for r in rows],
                         has_paper=has_paper_numbers(rows), config=sample_config)

    report.figures += table_figures(ordered, rows, out_dir, table, sample_config, curve, n_boot=n_boot,
                                    tsne_fold=tsne_fold)
    if use_wandb:
        log_table_to_wandb(table, report)
    return report


def _paper_note(table: str, rows: list[TableRow]) -> str:
    """What the 'paper' columns hold: the table's own rows, a row's first table for a study beyond the paper
    (``tables.paper_rows_of``), or nothing (the paper's figures are plots)."""
    in_paper = any(r.table == table for r in load_paper_results())
    if has_paper_numbers(rows):
        if in_paper:
            return "'paper' columns: the numbers reported in the paper for the same row."
        return (f"'paper' columns: {table} is not in the paper; a row the paper has shows the numbers of the "
                "first of its tables that lists it (PneumoLLM: Table 2), the other rows none.")
    if table.startswith("fig"):
        return f"The paper shows {table} as a plot only, so no paper numbers stand beside ours."
    return f"{table} is not in the paper and none of its rows is, so no paper numbers stand beside ours."


def table_title(table: str, arms: list[ArmRuns], num_folds: int) -> str:
    """table.md's title: the table, the folds, the size of the arms (``size=tiny (CPU stand-ins)``) and, for a
    cohort with its own class names, its classes."""
    names = common_class_names(a.class_names for a in arms)
    classes = "" if names == BINARY_CLASSES else f", {class_words(names)}"
    return f"{table}: {num_folds}-fold cross-validation, {size_words(a.size for a in arms)}{classes}"


def table_figures(ordered: list[ArmRuns], rows: list[TableRow], out_dir: Path, table: str,
                  config: DictConfig, curve: dict[str, float] | None, n_boot: int = 2000,
                  tsne_fold: int | None = None) -> list[Path]:
    """The table's figures: roc.png, curve.png (figures with a swept setting), calibration.png, decision_curve.png
    (and its decision_curve.csv), tsne.png and films.png where the runs saved features and the prepared cohort is
    readable."""
    summaries = [r.summary for r in rows]
    names = common_class_names(a.class_names for a in ordered)
    figures = [plot_roc(ordered, summaries, out_dir / "roc.png",
                        f"{table}: pooled out-of-fold ROC of {probability_name(names)}",
                        intervals=[r.pooled_auc for r in rows], n_boot=n_boot)]
    if curve:
        xs = [curve[a.arm] for a in ordered]
        curve_key = OmegaConf.select(config, "experiment.curve")
        x_label = OmegaConf.select(config, "experiment.curve_label") or curve_key
        figures.append(plot_metric_curve(xs, summaries, x_label, out_dir / "curve.png",
                                         f"{table}: AUC and AVG against {x_label}"))
    fold, features = tsne_features(ordered, tsne_fold)
    if features:
        figures.append(plot_tsne(features, out_dir / "tsne.png",
                                 f"{table}: t-SNE of head-input features, fold {fold}'s test films "
                                 f"(each arm's fold-{fold} model)", class_names=names))
    if any(s.task is not None for s in summaries):
        staged = plot_confusion_matrices(summaries, out_dir / "confusion.png",
                                         f"{table}: pooled out-of-fold confusion matrices")
        what = "stage" if staged is not None else "finding"
        rocs = plot_output_rocs(ordered, summaries, out_dir / f"{what}_roc.png",
                                f"{table}: pooled out-of-fold one-vs-rest ROC per {what}")
        figures += [f for f in (staged, rocs) if f is not None]
    from pneumollm.analysis.summary import write_calibration_figures

    figures += [f for f in write_calibration_figures(summaries, out_dir, table) if f.suffix == ".png"]
    films, calls = _panel_films(ordered)
    if films:
        figures.append(plot_film_panel(films, calls, out_dir / "films.png",
                                       f"{table}: test films across folds, including each arm's errors",
                                       class_names=names))
    return figures


def _numeric_rows(path: Path) -> tuple[list[str], list[list[Any]]]:
    """A CSV's header and rows with numbers as floats and empty cells as None (W&B tables sort and plot them)."""
    import csv

    def value(cell: str) -> Any:
        if cell == "":
            return None
        try:
            return float(cell)
        except ValueError:
            return cell

    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [[value(c) for c in row] for row in rows[1:]]


def aggregate_run_id(table: str, config: DictConfig | None) -> str:
    """The W&B id of a table's aggregate run: one per (table, size, cohort), so re-aggregating updates it."""
    size = OmegaConf.select(config, "size_name", default="?") if config is not None else "?"
    cohort = OmegaConf.select(config, "data.cohort", default="?") if config is not None else "?"
    return f"aggregate-{sha256_json([table, size, cohort])[:12]}"


def log_table_to_wandb(table: str, report: TableReport) -> str | None:
    """One ``aggregate`` run per (table, size, cohort), updated on every aggregation (offline unless
    ``WANDB_MODE=online``): the table as numbers (``table.csv``), the per-fold metrics (``summary.csv``) and
    the figures. Returns the run's id (None without wandb)."""
    try:
        import wandb
    except ImportError:
        return None
    config = report.config
    project = OmegaConf.select(config, "logger.wandb.project") if config is not None else None
    size = OmegaConf.select(config, "size_name", default="?") if config is not None else "?"
    cohort = OmegaConf.select(config, "data.cohort", default="?") if config is not None else "?"
    run_id = aggregate_run_id(table, config)
    verbose = bool(OmegaConf.select(config, "logger.wandb.verbose", default=False)) if config is not None else False
    run = wandb.init(project=project or "pneumollm", id=run_id, resume="allow", group=f"{table}/aggregate",
                     job_type="aggregate", name=f"{table}-{size}-{cohort}", tags=[table, str(size), str(cohort)],
                     config={"table": table, "size": size, "cohort": cohort}, dir=str(report.table_md.parent),
                     mode=os.environ.get("WANDB_MODE", "offline"), reinit="finish_previous", **quiet_wandb(verbose))
    try:
        columns, rows = _numeric_rows(report.table_csv)
        logged: dict[str, Any] = {"table": wandb.Table(columns=columns, data=rows)}
        summary_csv = report.table_md.parent / "summary.csv"
        if summary_csv.is_file():
            columns, rows = _numeric_rows(summary_csv)
            fold = columns.index("fold")
            logged["per_fold"] = wandb.Table(columns=columns, data=[r for r in rows if isinstance(r[fold], float)])
        decisions = report.table_md.parent / "decision_curve.csv"
        if decisions.is_file():
            columns, rows = _numeric_rows(decisions)
            logged["decision_curve"] = wandb.Table(columns=columns, data=rows)
        logged.update({fig.stem: wandb.Image(str(fig)) for fig in report.figures})
        run.log(logged)
    finally:
        run.finish()
    return run_id
