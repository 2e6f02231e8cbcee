"""``pneumollm-predict --explain DIR``: one explanation PNG per predicted film, and an index of them.

The map explains what the output CSV reports: for a single fold its probability, for an ensemble the mean of
the folds' probabilities (attributed through its exact log-odds, see :class:`EnsembleLogits`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumollm.data.films import decode_film
from pneumollm.inference.explain import attribution_maps, forward_passes, log_probabilities, write_explanation
from pneumollm.inference.inputs import InputFilm, write_rows
from pneumollm.inference.models import TrainedModel
from pneumollm.training.records import number_text
from pneumollm.utils.progress import progress_bar

INDEX_FILE = "explanations.csv"
COLOURBAR_LABELS = {"occlusion": "drop in log-odds when hidden", "integrated_gradients": "log-odds contribution"}


class EnsembleLogits(nn.Module):
    """The folds' mean probability p as two logits (log(1 - p), log p), computed in log space.

    Softmax of these logits gives p back, and their difference is p's log-odds without passing through a
    float32 p that saturates at 1.0 for a confident model; so the attribution code's exact log-odds apply.
    """

    def __init__(self, model: TrainedModel) -> None:
        super().__init__()
        self.folds = nn.ModuleList(f.net for f in model.folds)
        self.losses = [f.loss for f in model.folds]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        log_p, log_q = [], []
        for net, loss in zip(self.folds, self.losses):
            p, q = _log_probabilities(loss, net(images).float())
            log_p.append(p)
            log_q.append(q)
        count = torch.log(torch.tensor(float(len(self.folds)), device=images.device))
        return torch.stack([torch.stack(log_q).logsumexp(0) - count, torch.stack(log_p).logsumexp(0) - count], dim=1)


def _log_probabilities(loss: Any, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p, log(1 - p)) of the positive class: exact for the suite's losses, else from a clamped p."""
    exact = log_probabilities(loss, logits)
    if exact is not None:
        return exact
    p = loss.positive_probability(logits).float().clamp(1e-7, 1 - 1e-7)
    return p.log(), (1 - p).log()


def explanation_name(name: str, taken: set[str]) -> str:
    """A file name for a film's PNG from its name in the output CSV (its last two path parts, so that
    ``P0001/1.dcm`` gives ``P0001_1.png``), unique within ``taken``."""
    stem = "/".join(Path(name.replace("\\", "/")).parts[-2:]) if name else ""
    stem = re.sub(r"\.(dcm|dicom|png|jpe?g|tiff?|bmp)$", "", stem, flags=re.IGNORECASE)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.strip("./")).strip("_") or "film"
    candidate, n = f"{stem}.png", 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}_{n}.png"
    taken.add(candidate)
    return candidate


def short_title(name: str, limit: int = 60) -> str:
    """A film's name for a figure title: as given when short, else its last path parts after an ellipsis."""
    if len(name) <= limit:
        return name
    parts = Path(name).parts
    for n in range(len(parts) - 1, 0, -1):
        tail = "/".join(parts[-n:])
        if len(tail) + 2 <= limit:
            return ".../" + tail
    return "..." + name[-(limit - 3):]


def explain_films(model: TrainedModel, films: Sequence[InputFilm], probs: np.ndarray, out_dir: str | Path,
                  method: str = "occlusion", progress: bool = True, **options: Any) -> list[Path]:
    """Write ``out_dir/<film>.png`` (film with its lung-crop box, model input, attribution map) for every
    prepared film, and ``out_dir/explanations.csv`` (path, prob, explanation, status, reason).

    ``films`` are prepared films (``status == "ok"``), ``probs`` their probabilities in the same order (the
    ensemble's mean); ``options`` go to :func:`~pneumollm.inference.explain.attribution_maps`. A film whose
    explanation fails (its source vanished since it was predicted, say) is listed with the reason; the others
    are still written.
    """
    forward_passes(method, **options)  # a bad method or option fails here, not once per film
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(model.folds) == 1:
        net, probability = model.folds[0].net, model.folds[0].loss.positive_probability
    else:
        net, probability = EnsembleLogits(model), None
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    taken: set[str] = set()
    written: list[Path] = []
    rows: list[dict[str, object]] = []
    for film, prob in progress_bar(list(zip(films, probs)), f"explaining {len(films)} films ({method})",
                                   total=len(films), enabled=progress):
        row: dict[str, object] = {"path": film.name, "prob": number_text(prob)}
        try:
            if film.image is None:
                raise ValueError("the film was not prepared")
            images = torch.from_numpy(np.array(film.image))[None, None].to(device).float().div_(255.0)
            attribution = attribution_maps(net, images, method, probability=probability, **options)[0]
            whole = decode_film(film.path, allowed_modalities=model.settings.allowed_modalities).pixels
            path = write_explanation(out_dir / explanation_name(film.name, taken), whole, film.box, film.image,
                                     attribution, float(prob), title=short_title(film.name),
                                     colorbar_label=COLOURBAR_LABELS[method], positive=model.task.class_names[1])
        except Exception as err:  # one film's explanation never stops the others
            row.update(explanation="", status="failed", reason=f"{type(err).__name__}: {err}")
        else:
            written.append(path)
            row.update(explanation=path.name, status="ok", reason="")
        rows.append(row)
    write_rows(out_dir / INDEX_FILE, rows, ("path", "prob", "explanation", "status", "reason"))
    return written
