"""Where a classifier finds pneumoconiosis: per-pixel attribution maps (Captum) and a three-panel PNG per film.

Both methods only call ``net(images)``, so they work for every arm of the suite:

- ``occlusion`` (:class:`captum.attr.Occlusion`): hide a square window of the input (default 16 px, stride 8)
  and record how much the log-odds of pneumoconiosis, log(p / (1 - p)), drop; a pixel's value is the mean drop
  over the windows that cover it. Forward passes only, under ``torch.no_grad``. The window is filled with black
  by default: the lungs are the dark part of a film, so black hides what lies in a lung window (opacities,
  vessels) without adding anything, whereas the film's mean grey paints a bright square there that looks like
  an opacity itself (on the demo cohort it turned the opacities' attribution negative; docs/explanations.md).
- ``integrated_gradients`` (:class:`captum.attr.IntegratedGradients`): the gradient of the log-odds integrated
  along the straight path from a black film to the input, times the input; the map sums to
  log-odds(film) - log-odds(black film). One forward and one backward pass per step.

Both attribute the log-odds rather than p by default: p saturates (a film at P = 99.99999 % moves p by about
1e-6 whatever is hidden, so a map of p is float32 rounding noise), the log-odds of two logits are exact (l1 - l0).
Positive values are evidence for pneumoconiosis, negative ones evidence against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumollm.training.losses import ClassificationLoss, MultiLabelBCELoss
from pneumollm.utils.io import atomic_write

Probability = Callable[[torch.Tensor], torch.Tensor]
METHODS = ("occlusion", "integrated_gradients")
OUTPUTS = ("probability", "log_odds")
OCCLUSION_BASELINES = ("mean", "zero", "blur")
FIGURE_INCHES = (13.0, 4.6)  # the PNG of write_explanation: 1300 x 460 pixels at FIGURE_DPI
FIGURE_DPI = 100

_DEFAULTS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 16, "stride": 8, "baseline": "zero", "output": "log_odds", "batch_size": 64},
    "integrated_gradients": {"n_steps": 32, "baseline": 0.0, "output": "log_odds", "batch_size": 64},
}


def softmax_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(pneumoconiosis) as the suite's default loss computes it: softmax over the logits, class 1."""
    return logits.float().softmax(dim=-1)[:, 1]


def forward_passes(method: str, height: int = 224, width: int = 224, **options: Any) -> int:
    """Forward passes of the net per film that :func:`attribution_maps` makes (integrated gradients: each
    also has a backward pass)."""
    settings = _options(method, options)
    if method == "occlusion":
        rows = max(0, (height - settings["window"]) // settings["stride"] + 1)
        cols = max(0, (width - settings["window"]) // settings["stride"] + 1)
        return 1 + rows * cols
    return int(settings["n_steps"])


def attribution_maps(net: nn.Module, images: torch.Tensor, method: str = "occlusion",
                     probability: Probability | None = None, **options: Any) -> np.ndarray:
    """Evidence for pneumoconiosis per pixel of the model input, float32 [B, H, W].

    ``images``: float [B, 1, H, W] in [0, 1] on the net's device. ``probability``: logits -> P(pneumoconiosis)
    per film (e.g. the run's ``loss.positive_probability``); default :func:`softmax_probability`.
    Options, occlusion: ``window`` (16), ``stride`` (8), ``baseline`` ("zero": black, "mean": each film's mean,
    "blur": a Gaussian-blurred copy of the film, or a number), ``output`` ("log_odds"), ``batch_size`` (64 films
    per forward pass). Integrated gradients: ``n_steps`` (32), ``baseline`` (0.0, a black film), ``output``
    ("log_odds"), ``batch_size`` (64). ``output`` "probability" attributes p itself instead of the log-odds
    log(p / (1 - p)); those come straight from the logits for the default and for a suite loss's
    ``positive_probability`` (softmax or sigmoid), and as ``logit(p)`` with p clamped to [1e-6, 1 - 1e-6] for
    any other callable.
    The net runs in eval mode; every module's train/eval flag is restored afterwards.
    """
    settings = _options(method, options)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be [B, 1, H, W] greyscale films, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got {images.dtype}")
    score = _score_function(net, probability, settings["output"])
    with _eval_mode(net):
        if method == "occlusion":
            attribution = _occlusion(score, images, settings)
        else:
            attribution = _integrated_gradients(score, images, settings)
    return attribution.detach()[:, 0].float().cpu().numpy()


def _options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    unknown = sorted(set(options) - set(_DEFAULTS[method]))
    if unknown:
        raise TypeError(f"{method} takes the options {', '.join(_DEFAULTS[method])}; not {', '.join(unknown)}")
    settings = {**_DEFAULTS[method], **options}
    if settings["output"] not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {settings['output']!r}")
    if int(settings["batch_size"]) < 1:
        raise ValueError(f"batch_size must be at least 1, got {settings['batch_size']}")
    return settings


def _score_function(net: nn.Module, probability: Probability | None, output: str
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> [B] P(pneumoconiosis) or its log-odds."""
    positive = probability or softmax_probability
    exact = _exact_log_odds(positive) if output == "log_odds" else None
    if exact is not None:
        return lambda images: exact(net(images).float())

    def score(images: torch.Tensor) -> torch.Tensor:
        p = positive(net(images)).float().reshape(-1)
        return torch.logit(p, eps=1e-6) if output == "log_odds" else p
    return score


def log_probabilities(loss: Any, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(log p, log(1 - p)) of P(pneumoconiosis) straight from the logits, for the suite's losses (a softmax summed
    over ``positive_columns``, or one sigmoid per output, as ``positive_probability`` defines p); None for a loss
    whose p is defined otherwise."""
    own = type(loss).positive_probability if isinstance(loss, ClassificationLoss) else None
    if isinstance(loss, MultiLabelBCELoss) and own is MultiLabelBCELoss.positive_probability:
        column = logits[:, loss.positive_index]
        return nn.functional.logsigmoid(column), nn.functional.logsigmoid(-column)
    if own is ClassificationLoss.positive_probability:
        columns = loss.positive_columns(logits.shape[-1])
        rest = [k for k in range(logits.shape[-1]) if k not in columns]
        log_softmax = logits.log_softmax(dim=-1)
        return log_softmax[:, columns].logsumexp(dim=1), log_softmax[:, rest].logsumexp(dim=1)
    return None


def _exact_log_odds(probability: Probability) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """logits -> log-odds without going through p, for the probabilities the suite knows: the default softmax
    and a training loss's ``positive_probability`` (see :func:`log_probabilities`); None for others."""
    if probability is softmax_probability:
        loss: Any = ClassificationLoss()
    else:
        loss = getattr(probability, "__self__", None)
        if getattr(probability, "__name__", "") != "positive_probability":
            return None
    if log_probabilities(loss, torch.zeros(1, 2)) is None:
        return None

    def log_odds(logits: torch.Tensor) -> torch.Tensor:
        log_p, log_q = log_probabilities(loss, logits)  # type: ignore[misc]
        return log_p - log_q
    return log_odds


@contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """Run ``net`` in eval mode, then give every module back its own train/eval flag."""
    flags = [(module, module.training) for module in net.modules()]
    net.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _occlusion(score: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
               settings: dict[str, Any]) -> torch.Tensor:
    from captum.attr import Occlusion

    window, stride = int(settings["window"]), int(settings["stride"])
    height, width = images.shape[-2:]
    if not (0 < window <= min(height, width)) or stride < 1:
        raise ValueError(f"occlusion window {window} / stride {stride} do not fit a {height}x{width} input")
    per_eval = max(1, int(settings["batch_size"]) // images.shape[0])
    with torch.no_grad():
        return Occlusion(score).attribute(
            images, sliding_window_shapes=(1, window, window), strides=(1, stride, stride),
            baselines=_occlusion_baseline(images, settings["baseline"], window),
            perturbations_per_eval=per_eval, show_progress=False,
        )


def _occlusion_baseline(images: torch.Tensor, baseline: str | float, window: int) -> torch.Tensor | float:
    """What fills a hidden window: each film's mean, black, a blurred copy of the film, or a number."""
    if not isinstance(baseline, str):
        return float(baseline)
    if baseline == "zero":
        return 0.0
    if baseline == "mean":
        return images.mean(dim=(1, 2, 3), keepdim=True).expand_as(images).contiguous()
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur

        sigma = window / 4
        return gaussian_blur(images, kernel_size=2 * round(3 * sigma) + 1, sigma=sigma)
    raise ValueError(f"occlusion baseline must be one of {', '.join(OCCLUSION_BASELINES)} or a number, "
                     f"got {baseline!r}")


def _integrated_gradients(score: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                          settings: dict[str, Any]) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    n_steps = int(settings["n_steps"])
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    with torch.enable_grad():
        return IntegratedGradients(score).attribute(
            images, baselines=float(settings["baseline"]), n_steps=n_steps,
            internal_batch_size=max(int(settings["batch_size"]), images.shape[0]),
        )


def explanation_heading(prob: float, title: str | None = None, positive: str = "pneumoconiosis") -> str:
    """An explanation PNG's heading: the film's title and its probability of class 1 (``positive``, the second
    of ``data.class_names``), e.g. ``P0001/1.dcm: P(tuberculosis) = 87.5 %``."""
    heading = f"P({positive}) = {100.0 * float(prob):.1f} %"
    return f"{title}: {heading}" if title else heading


def write_explanation(path: str | Path, film: np.ndarray, box: Sequence[int] | None, image: np.ndarray,
                      attribution: np.ndarray, prob: float, title: str | None = None,
                      colorbar_label: str = "evidence for pneumoconiosis", outline: np.ndarray | None = None,
                      positive: str = "pneumoconiosis") -> Path:
    """One PNG (1300 x 460 px): the decoded film with its lung-crop box, the model's input, and the input under
    the attribution map (red: for class 1, ``positive``, blue: against; opacity grows with the magnitude).

    ``film``: uint8 [h, w] whole film; ``box``: the crop in the film's pixels as (top, left, bottom, right),
    bottom/right exclusive (``CropResult.box``, the sidecar's "box"), or None when the film was not cropped;
    ``image``: uint8 [H, W] model input; ``attribution``: [H, W] (one row of :func:`attribution_maps`);
    ``prob``: P(pneumoconiosis) in [0, 1]; ``outline``: an optional boolean [H, W] mask (e.g. known lesions)
    drawn as a green contour on the input panels. Written atomically, with the mode a plain ``open()`` gives.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    film, image = _grey(film, "film"), _grey(image, "image")
    attribution = np.asarray(attribution, dtype=np.float32).squeeze()
    if attribution.shape != image.shape:
        raise ValueError(f"attribution {attribution.shape} does not match the image {image.shape}")
    if box is not None and len(box) != 4:
        raise ValueError(f"box must be (top, left, bottom, right), got {box!r}")

    fig = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    width, height = FIGURE_INCHES
    side, bottom = 3.75, 0.22  # inches: three equal square panels, then the colour bar beside the third
    axes = [fig.add_axes((x / width, bottom / height, side / width, side / height)) for x in (0.15, 4.15, 8.15)]
    bar_axes = fig.add_axes(((8.15 + side + 0.1) / width, bottom / height, 0.15 / width, side / height))
    axes[0].imshow(film, cmap="gray", vmin=0, vmax=255)
    if box is not None:
        top, left, bottom, right = (int(v) for v in box)
        axes[0].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                    edgecolor="#ffd400", linewidth=1.6))
        axes[0].set_title(f"film {film.shape[1]}x{film.shape[0]}, lung crop (yellow)", fontsize=10)
    else:
        axes[0].set_title(f"film {film.shape[1]}x{film.shape[0]} (not cropped)", fontsize=10)
    axes[1].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[1].set_title(f"model input {image.shape[1]}x{image.shape[0]}", fontsize=10)

    finite = np.nan_to_num(attribution, nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.percentile(np.abs(finite), 99.5)) or float(np.abs(finite).max()) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-scale, vmax=scale)
    colours = colormaps["RdBu_r"]
    overlay = colours(norm(np.clip(finite, -scale, scale)))
    overlay[..., 3] = 0.85 * np.clip(np.abs(finite) / scale, 0.0, 1.0) ** 0.75
    axes[2].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[2].imshow(overlay)
    axes[2].set_title("attribution over the input", fontsize=10)
    if outline is not None:
        outline = np.asarray(outline, dtype=bool).squeeze()
        if outline.shape != image.shape:
            raise ValueError(f"outline {outline.shape} does not match the image {image.shape}")
        if outline.any():
            for ax in axes[1:]:
                ax.contour(outline, levels=[0.5], colors="#00e060", linewidths=0.6)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colours), cax=bar_axes)
    bar.set_label(colorbar_label, fontsize=9)
    bar.ax.tick_params(labelsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(explanation_heading(prob, title, positive), fontsize=12, y=0.985)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=FIGURE_DPI))


def _grey(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array).squeeze()
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D greyscale array, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    return array
