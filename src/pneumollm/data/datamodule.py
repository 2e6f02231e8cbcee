"""The Lightning DataModule: prepares the cohort once, then serves one fold's train/val/test films."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pneumollm.data.cohort_report import no_usable_films, summary_lines
from pneumollm.data.film_array import load_film_array
from pneumollm.data.folds import FOLDS_FILE, FoldSplit, load_or_make_folds, split_fold
from pneumollm.data.preprocess import (
    PIPELINE_VERSION,
    HashIndex,
    PreparedCohort,
    PreparedFilm,
    code_fingerprint,
    cpu_workers,
    prepare_cohort,
    read_cohort_index,
)
from pneumollm.data.preprocess_plan import build_segmenter, preprocess_settings_from_config
from pneumollm.data.sources import list_cohort
from pneumollm.data.targets import BINARY, MULTILABEL, LabelTask
from pneumollm.errors import ConfigError
from pneumollm.utils.console import say
from pneumollm.utils.io import sha256_json

SELECTION_SPLITS = ("validation", "test_fold_reference")


MIN_PATIENTS_PER_CLASS = 5  # fewer validation or test patients of a class than this earn a warning


def small_split_warnings(sizes: Mapping[str, Mapping[str, int]], class_names: Sequence[str], fold: int,
                         minimum: int = MIN_PATIENTS_PER_CLASS, shared: bool = False) -> list[str]:
    """Warnings for the validation and test splits (``split_sizes``) that hold fewer than ``minimum`` patients of
    a class. ``shared``: the validation films are the test fold's (nothing separate to warn about)."""
    warnings = []
    for split, what in (("val", "validation"), ("test", "test")):
        if split not in sizes or (shared and split == "val"):
            continue
        positive = int(sizes[split].get("positive_patients", 0))
        counts = {class_names[1]: positive, class_names[0]: int(sizes[split]["patients"]) - positive}
        short = {name: n for name, n in counts.items() if n < minimum}
        if short:
            listing = " and ".join(f"{n} {name}" for name, n in short.items())
            fix = ("more patients, fewer folds (data.num_folds) or a larger data.val_fraction" if split == "val"
                   else "more patients or fewer folds (data.num_folds)")
            warnings.append(f"fold {fold} has only {listing} {what} patient(s) (fewer than {minimum} of a class): its "
                            f"{what} figures rest on very few patients and are unstable; use {fix}")
    return warnings


# Keys of a batch dict: LABEL is what the loss trains on (the task's target: a class index, or a multi-hot row
# of findings), ANY the film's "any pneumoconiosis" 0/1 label that the paper's binary metrics use.
IMAGE, LABEL, INDEX, ANY = "image", "label", "index", "any"


def target_tensor(films: list[PreparedFilm], task: LabelTask) -> torch.Tensor:
    """The films' training targets: class indices [N] (long), or multi-hot findings [N, L] (float)."""
    if task.task == MULTILABEL:
        return torch.tensor([task.multi_hot(f.target) for f in films], dtype=torch.float32).reshape(len(films), -1)
    return torch.tensor([f.target for f in films], dtype=torch.long)


class FilmDataset(Dataset):
    """Preprocessed films held in memory as uint8 [N, 1, H, W]; items are dicts (image float in [0, 1]).

    After ``set_inputs`` the items carry those tensors instead of the images (a frozen prefix's features).
    """

    def __init__(self, films: list[PreparedFilm], images: torch.Tensor, task: LabelTask | None = None) -> None:
        self.films = films
        self.images = images
        self.labels = torch.tensor([f.label for f in films], dtype=torch.long)
        self.targets = target_tensor(films, task or LabelTask())
        self.inputs: torch.Tensor | None = None

    def set_inputs(self, inputs: torch.Tensor) -> None:
        """Serve ``inputs[i]`` (one row per film, in this dataset's order) in place of the image."""
        if len(inputs) != len(self.films):
            raise ValueError(f"{len(inputs)} inputs for {len(self.films)} films")
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.films)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            IMAGE: self.images[index].float().div_(255.0) if self.inputs is None else self.inputs[index],
            LABEL: self.targets[index],
            INDEX: index,
            ANY: self.labels[index],
        }


class EpochSeededSampler(Sampler[int]):
    """Shuffles with a permutation derived from (seed, epoch) only, so a resumed run sees the same order."""

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


class CohortDataModule(L.LightningDataModule):
    """Patient-level cross-validation over a preprocessed cohort.

    ``prepare_data`` reads the cohort, preprocesses every film into the on-disk cache (skipping and
    reporting bad files) and makes or reuses ``folds.csv``. ``setup`` loads the fold's films into memory:
    the test patients are the fold's; validation patients are carved from the training patients
    (``selection_split="validation"``). ``selection_split="test_fold_reference"`` reproduces the reference
    code's optimistic protocol (selection on the test fold) and exists only for reproduction.
    """

    def __init__(
        self,
        source: Mapping[str, Any],
        prepared_dir: str,
        lungs: Mapping[str, Any],
        image_size: int = 224,
        min_film_size: int = 64,
        fold: int = 0,
        num_folds: int = 5,
        val_fraction: float = 0.2,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        folds_seed: int = 0,
        folds_file: str | None = None,
        regenerate_folds: bool = False,
        selection_split: str = "validation",
        label_map: Mapping[str, int | str] | None = None,
        task: str = BINARY,
        classes: Sequence[str] | None = None,
        label_columns: Sequence[str] | None = None,
        label_column: str | None = None,
        class_names: Sequence[str] | None = None,
        num_outputs: int | None = None,
        allowed_modalities: tuple[str, ...] | list[str] = ("CR", "DX", "DR", "RG", "OT"),
        preprocess_workers: int | None = None,
        progress: bool = True,
        cohort: str = "cohort",
    ) -> None:
        super().__init__()
        if selection_split not in SELECTION_SPLITS:
            raise ConfigError(f"data.selection_split must be one of {SELECTION_SPLITS}, got {selection_split!r}")
        if not 0 <= fold < num_folds:
            raise ConfigError(f"data.fold={fold} is outside 0..{num_folds - 1}")
        self.cohort_name = cohort
        self.source = dict(source)
        self.prepared_dir = Path(prepared_dir)
        self.settings = preprocess_settings_from_config({"image_size": image_size, "lungs": lungs,
                                                         "allowed_modalities": allowed_modalities,
                                                         "min_film_size": min_film_size})
        self.fold = fold
        self.num_folds = num_folds
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.folds_seed = folds_seed
        self.folds_path = Path(folds_file) if folds_file else self.prepared_dir / FOLDS_FILE
        self.regenerate_folds = regenerate_folds
        self.selection_split = selection_split
        self.label_map = dict(label_map) if label_map else None
        self.task = LabelTask.from_config(task, classes, label_columns, label_column, self.label_map, class_names)
        if num_outputs is not None and int(num_outputs) != self.task.num_outputs:
            raise ConfigError(f"data.num_outputs={num_outputs} but data.task={task} has {self.task.num_outputs} "
                              f"outputs ({', '.join(self.task.output_names)}); leave data.num_outputs at its default")
        self.preprocess_workers = preprocess_workers
        self.progress = progress
        self.cohort: PreparedCohort | None = None
        self.split: FoldSplit | None = None
        self.assignment: dict[str, int] | None = None  # patient -> fold, read or made once per run
        self.datasets: dict[str, FilmDataset] = {}
        self._identity: dict[str, Any] | None = None

    @cached_property
    def cohort_folder(self) -> Path:
        """This preprocessing setting's folder of the prepared cohort (its tag hashes the settings and code)."""
        return self.prepared_dir / self.settings.tag()

    def prepare_data(self) -> None:
        if self.cohort is not None:  # already prepared by this instance (the fold runner calls it before fit)
            return
        listing = list_cohort(self.source, progress=self.progress, task=self.task)
        for note in listing.notes:
            say(f"[bold]cohort[/bold] note: {note}")
        self.cohort = prepare_cohort(
            listing, self.prepared_dir, self.settings, partial(build_segmenter, self.settings),
            workers=cpu_workers(self.preprocess_workers), progress=self.progress,
        )
        if not self.cohort.films:
            raise no_usable_films(self.cohort.skipped, self._source_name(), self.cohort.report_csv,
                                  self._source_csv())
        for line in summary_lines(self.cohort, self.task.class_names):
            say(f"[bold]cohort[/bold] {line}")
        pairs = [(f.patient_id, f.target) for f in self.cohort.films]
        self.assignment = load_or_make_folds(self.folds_path, pairs, self.num_folds, self.folds_seed,
                                             self.regenerate_folds, task=self.task)
        self.regenerate_folds = False  # once per run, not once per stage
        self._identity = None

    def _source_csv(self) -> Path | None:
        """The CSV whose rows list the films (a manifest, a labels CSV), if the cohort has one."""
        key = {"manifest": "manifest", "dicom_folder": "labels"}.get(str(self.source.get("kind")))
        return Path(str(self.source[key])).expanduser().resolve() if key and self.source.get(key) else None

    def _source_name(self) -> str:
        """The cohort as the user gave it: the manifest, the DICOM folder, or its name."""
        if self.source.get("kind") == "dicom_folder" and self.source.get("folder"):
            return str(Path(str(self.source["folder"])).expanduser().resolve())
        csv_file = self._source_csv()
        return str(csv_file) if csv_file is not None else f"cohort {self.cohort_name}"

    def cohort_identity(self) -> dict[str, Any]:
        """What the prepared cohort contributes to a run's result, independent of where anything lives.

        ``films``: each film's id, patient, label and source content hash; ``folds``: the fold of each
        patient; ``preprocessing``: the settings and code that made the films, with lung-model files (U-Net
        weights, CheXmask CSV) by content hash instead of path. Computed after ``prepare_data``.
        """
        if self._identity is None:
            if self.cohort is None:
                raise RuntimeError("cohort_identity() needs prepare_data() first")
            binary = self.task.task == BINARY  # the binary target is the label: the hash keeps its old form
            films = sorted((f.image_id, f.patient_id, f.label, f.content_hash) if binary else
                           (f.image_id, f.patient_id, f.label, f.target, f.content_hash) for f in self.cohort.films)
            pairs = [(f.patient_id, f.target) for f in self.cohort.films]
            assignment = self._fold_assignment(pairs)
            patients = {p for p, _ in pairs}
            self._identity = {
                "films": sha256_json(films)[:16], "num_films": len(films),
                "folds": sha256_json(sorted((p, f) for p, f in assignment.items() if p in patients))[:16],
                "preprocessing": sha256_json(self._preprocessing_identity())[:16],
            }
        return dict(self._identity)

    def _fold_assignment(self, pairs: Sequence[tuple[str, int]]) -> dict[str, int]:
        """Each patient's fold: the one ``prepare_data`` read or made (once per run), else ``folds.csv`` now."""
        if self.assignment is None:
            self.assignment = load_or_make_folds(self.folds_path, pairs, self.num_folds, self.folds_seed,
                                                 task=self.task)
        return self.assignment

    def _preprocessing_identity(self) -> dict[str, Any]:
        hashes = HashIndex(self.prepared_dir / "file_hashes.json")
        lungs = {}
        for key, value in self.settings.lungs.items():
            path = Path(str(value)).expanduser() if isinstance(value, str) else None
            lungs[key] = f"sha256:{hashes.content_hash(path.resolve())}" if path is not None and path.is_file() \
                else value
        hashes.save()
        settings = {k: v for k, v in asdict(self.settings).items() if k != "lungs"}
        return {**settings, "lungs": lungs, "code": code_fingerprint(), "version": PIPELINE_VERSION}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        films = read_cohort_index(self.cohort_folder)
        pairs = [(f.patient_id, f.target) for f in films]
        assignment = self._fold_assignment(pairs)
        targets: dict[str, list[int]] = {}
        for patient, target in pairs:
            targets.setdefault(patient, []).append(target)
        patient_labels = {patient: self.task.combine(values) for patient, values in targets.items()}
        self.split = split_fold(assignment, patient_labels, self.fold, self.val_fraction, self.seed, task=self.task)
        test_patients = self.split.test
        val_patients = self.split.test if self.selection_split == "test_fold_reference" else self.split.val
        parts = {"train": self.split.train, "val": val_patients, "test": test_patients}
        images = load_film_array(self.cohort_folder, films, self.settings.image_size)
        for name, patients in parts.items():
            chosen = [i for i, f in enumerate(films) if f.patient_id in patients]
            split_images = torch.from_numpy(np.ascontiguousarray(images[chosen])).unsqueeze(1)
            self.datasets[name] = FilmDataset([films[i] for i in chosen], split_images, self.task)

    def split_sizes(self) -> dict[str, dict[str, int]]:
        """Films, patients, positive films and positive patients (any film of label 1) per split (after ``setup``)."""
        sizes = {}
        for name, ds in self.datasets.items():
            patients = {f.patient_id for f in ds.films}
            sizes[name] = {"films": len(ds), "patients": len(patients), "positives": int(ds.labels.sum()),
                           "positive_patients": len({f.patient_id for f in ds.films if f.label})}
        return sizes

    def split_warnings(self, minimum: int = MIN_PATIENTS_PER_CLASS) -> list[str]:
        """A warning per class with fewer than ``minimum`` patients in this fold's validation or test films (after
        ``setup``): figures on so few patients swing by tens of points with one patient."""
        return small_split_warnings(self.split_sizes(), self.task.class_names, self.fold, minimum,
                                    shared=self.selection_split == "test_fold_reference")

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[name]
        sampler = EpochSeededSampler(len(dataset), self.seed) if shuffle else None
        return DataLoader(
            dataset, batch_size=self.batch_size if shuffle else self.eval_batch_size, sampler=sampler,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
