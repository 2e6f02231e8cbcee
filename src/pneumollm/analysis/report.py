"""Aggregate one table's sweep: the table files, its figures, and an ``aggregate`` run in W&B."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from pneumollm.analysis.collect import AggregationError, ArmRuns, collect_runs, split_complete
from pneumollm.analysis.figures import plot_film_panel, plot_metric_curve, plot_roc, plot_tsne
from pneumollm.analysis.tables import (
    COLUMNS,
    build_rows,
    has_paper_numbers,
    load_paper_results,
    row_cells,
    write_table,
)
from pneumollm.data.preprocess import read_cohort_index
from pneumollm.training.records import CONFIG_FILE, FEATURES_FILE


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
    rank = {name: i for i, name in enumerate(paper_order)}
    return sorted(arms.values(), key=lambda a: (rank.get(a.arm, len(rank)), a.arm))


def _features(arm: ArmRuns) -> tuple[np.ndarray, np.ndarray] | None:
    xs, ys = [], []
    for run_dir in arm.run_dirs.values():
        path = run_dir / FEATURES_FILE
        if not path.is_file():
            return None
        data = np.load(path)
        xs.append(data["features"])
        ys.append(data["labels"])
    return np.concatenate(xs), np.concatenate(ys)


def _panel_films(arms: list[ArmRuns], per_class: int = 3) -> list[tuple[str, int, Path]]:
    """A few test films (the first ``per_class`` of each class by id), with their preprocessed image."""
    for arm in arms:
        cohort = arm.folds[min(arm.folds)].get("cohort_folder")
        if not cohort:
            continue
        try:
            files = {film.image_id: Path(cohort) / film.file for film in read_cohort_index(cohort)}
        except FileNotFoundError:
            continue
        tested = sorted({(p.image_id, p.label) for p in arm.predictions})
        chosen = [t for t in tested if t[1] == 0][:per_class] + [t for t in tested if t[1] == 1][:per_class]
        return [(image_id, label, files[image_id]) for image_id, label in chosen if image_id in files]
    return []


def _full_size_or_none(console: Console) -> Callable[[str], int | None]:
    """The meta-device full-size count of an arm; a count that cannot be made is left out, with a warning."""
    from pneumollm.models.arm_param_count import full_size_trainable

    def count(arm: str) -> int | None:
        try:
            return full_size_trainable(arm)
        except Exception as err:  # a missing count must not stop the table
            console.print(f"[yellow]no full-size parameter count for {arm}: {err}[/yellow]", highlight=False)
            return None

    return count


def aggregate_table(runs_dir: str | Path, out_dir: str | Path, table: str, reference: str | None = None,
                    num_folds: int = 5, partial: bool = False, n_boot: int = 2000, title: str | None = None,
                    use_wandb: bool = True, console: Console | None = None,
                    arms: dict[str, ArmRuns] | None = None) -> TableReport:
    """Write ``table.md``/``table.csv`` and the figures of ``table`` from its runs under ``runs_dir``.

    ``arms``: the runs already collected from ``runs_dir`` (read again when not given).
    """
    console = console or Console(stderr=True)
    arms = collect_runs(runs_dir) if arms is None else arms
    complete, incomplete = split_complete(arms, num_folds, partial, f"{table} ({runs_dir})")
    configs = {name: _run_config(arm) for name, arm in complete.items()}
    sample_config = next(iter(configs.values()))
    curve_key = OmegaConf.select(sample_config, "experiment.curve")
    curve = _curve_values(complete, configs, curve_key) if curve_key else None
    ordered = _order(complete, table, curve)
    reference = reference or OmegaConf.select(sample_config, "experiment.reference")
    if reference and reference not in complete:
        console.print(f"[yellow]reference arm {reference!r} is not complete: no paired differences[/yellow]")
        reference = None
    rows = build_rows(ordered, reference, table, n_boot=n_boot, full_size=_full_size_or_none(console))
    out_dir = Path(out_dir)
    size = OmegaConf.select(sample_config, "size_name", default="?")
    title = title or f"{table} ({size} size, {num_folds}-fold cross-validation)"
    notes = [
        "Figures in percent: mean ± sample std (ddof=1) over folds; pooled AUC over all out-of-fold predictions "
        f"with a 95% percentile bootstrap interval resampling patients ({n_boot} resamples); Δ = paired "
        f"difference to the reference arm ({reference or 'none'}) over folds with a 95% t interval.",
        "L-para: trainable parameters of our runs; full-size L-para: the same row's configuration "
        "(conf/arm/) at the paper's size, counted on the meta device (command-line overrides not reflected); "
        "Mem: peak memory of the run (GPU allocated on CUDA, else the "
        "process's peak RSS). " + ("'paper' columns: the numbers reported in the paper for the same row."
                                    if has_paper_numbers(rows) else
                                    f"The paper shows {table} as a plot only, so no paper numbers stand beside ours."),
    ]
    if size == "tiny":
        epochs = OmegaConf.select(sample_config, "trainer.max_epochs")
        notes.append(f"Tiny size: randomly initialised models of reduced width and depth on CPU, {epochs} epochs "
                     "(each arm's reduction: docs/arms.md, 'Tiny sizes'; L-para shows the tiny count); they "
                     "exercise the pipeline and are not comparable with the paper's numbers.")
    if incomplete:
        notes.append("Incomplete arms left out: " + "; ".join(p for ps in incomplete.values() for p in ps))
    md_path, csv_path = write_table(rows, out_dir, title, notes)
    report = TableReport(md_path, csv_path, incomplete=incomplete, cells=[row_cells(r) for r in rows],
                         has_paper=has_paper_numbers(rows), config=sample_config)

    summaries = [r.summary for r in rows]
    report.figures.append(plot_roc(ordered, summaries, out_dir / "roc.png", f"{table}: pooled out-of-fold ROC"))
    if curve:
        xs = [curve[a.arm] for a in ordered]
        x_label = OmegaConf.select(sample_config, "experiment.curve_label") or curve_key
        report.figures.append(plot_metric_curve(xs, summaries, x_label, out_dir / "curve.png",
                                                f"{table}: AUC and AVG against {x_label}"))
    features = {s.label: f for a, s in zip(ordered, summaries) if (f := _features(a)) is not None}
    if features:
        report.figures.append(plot_tsne(features, out_dir / "tsne.png", f"{table}: t-SNE of head-input features"))
    films = _panel_films(ordered)
    if films:
        probs = {s.label: {p.image_id: p.prob for p in a.predictions} for a, s in zip(ordered, summaries)}
        report.figures.append(plot_film_panel(films, probs, out_dir / "films.png",
                                              f"{table}: P(pneumoconiosis) in % per arm"))
    if use_wandb:
        log_table_to_wandb(table, report)
    return report


def log_table_to_wandb(table: str, report: TableReport) -> None:
    """One ``aggregate`` run per table holding the table and the figures (offline unless WANDB_MODE=online)."""
    try:
        import wandb
    except ImportError:
        return
    project = OmegaConf.select(report.config, "logger.wandb.project") if report.config is not None else None
    project = project or "pneumollm"
    run = wandb.init(project=project, group=f"{table}/summary", job_type="aggregate", name=f"{table}-aggregate",
                     dir=str(report.table_md.parent), mode=os.environ.get("WANDB_MODE", "offline"),
                     reinit="finish_previous")
    try:
        run.log({"table": wandb.Table(columns=list(COLUMNS), data=report.cells)})
        run.log({fig.stem: wandb.Image(str(fig)) for fig in report.figures})
    finally:
        run.finish()
