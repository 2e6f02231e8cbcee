"""Frozen-prefix feature cache: compute the frozen first part of a model's image path once per film.

Several arms never change the image path up to some point (Table 6's baseline without adapters, the CLIP
arms whose image tower is frozen, any encoder with ``adapter.enabled=false``). Their prefix output is the
same every epoch, fold and arm, so it is computed once per film and kept on disk in the prepared cohort's
folder, keyed by what decides it: the prefix's class, settings, code and weights, the preprocessing (the
cohort folder) and the device and precision it ran in; inside a key, films are keyed by content hash.

It is used only where it cannot change a result: a prefix with trainable parameters, or with modules that
behave differently in training (dropout, drop-path, batch norm), is refused. No library offers this cut
for arbitrary models, hence the hand-written module.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pneumollm.errors import ConfigError
from pneumollm.models.base import FrozenPrefix
from pneumollm.utils.console import say
from pneumollm.utils.io import atomic_write
from pneumollm.utils.progress import progress_bar

if TYPE_CHECKING:
    import lightning as L

    from pneumollm.data.datamodule import CohortDataModule
    from pneumollm.training.module import ClassificationModule

CACHE_MODES = ("auto", "on", "off")
CACHE_DIR = "prefix_features"
_STOCHASTIC = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _stochastic_modules(prefix: nn.Module) -> list[str]:
    """Submodules that act differently in training mode: dropout with p > 0, drop-path, batch norm."""
    found = []
    for name, module in prefix.named_modules():
        if not module.training:
            continue
        p = getattr(module, "p", None) if isinstance(module, _STOCHASTIC) else getattr(module, "drop_prob", None)
        if (p or 0) > 0 or isinstance(module, nn.modules.batchnorm._BatchNorm):
            found.append(name or type(module).__name__)
    return found


def plan_prefix_cache(net: nn.Module, mode: str) -> FrozenPrefix | None:
    """The prefix to cache for ``net`` under ``feature_cache=mode``, or None.

    ``auto`` caches where it is valid and says nothing otherwise; ``on`` raises a ``ConfigError`` naming
    why it is not valid; ``off`` never caches.
    """
    if mode not in CACHE_MODES:
        raise ConfigError(f"feature_cache={mode!r}; choose one of {CACHE_MODES}")
    if mode == "off":
        return None
    finder = getattr(net, "frozen_prefix", None)
    prefix = finder() if callable(finder) else None
    if prefix is None:
        problems = [f"{type(net).__name__} has no frozen part before its first trainable one"]
    else:
        was_training = net.training
        net.train()  # the mode the prefix would be in while training
        trainable = [n for n, p in prefix.module.named_parameters() if p.requires_grad]
        stochastic = _stochastic_modules(prefix.module)
        net.train(was_training)
        problems = ([f"trainable parameters before the cut ({', '.join(trainable[:3])})"] if trainable else []) + \
                   ([f"modules that act randomly in training ({', '.join(stochastic[:3])})"] if stochastic else [])
    if problems:
        if mode == "on":
            raise ConfigError("feature_cache=on, but the model's frozen prefix cannot be cached: "
                              + "; ".join(problems))
        return None
    return prefix


def prefix_key(prefix: FrozenPrefix, *, device: torch.device, precision: str, extra: dict[str, Any]) -> str:
    """Cache key (24 hex digits) of a prefix: class, settings, source code, every weight and buffer, the
    device type and precision it runs in, the torch version, and ``extra`` (the preprocessing identity)."""
    digest = hashlib.sha256()
    cls = type(prefix.module)
    header = {"class": f"{cls.__module__}.{cls.__qualname__}", "settings": prefix.settings,
              "code": _code_digest(prefix.module),
              "device": device.type, "precision": precision, "torch": torch.__version__, **extra}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    tensors = [*prefix.module.named_parameters(), *prefix.module.named_buffers()]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def code_files(module: torch.nn.Module) -> list[Path]:
    """The source files a prefix's features depend on: those of the suite's classes among its modules, and every
    file of ``models/components`` (the helpers that pick blocks and pool tokens are functions, not modules)."""
    import pneumollm.models.components as components

    files = {Path(inspect.getsourcefile(type(m))) for m in module.modules()
             if type(m).__module__.startswith("pneumollm.") and inspect.getsourcefile(type(m))}
    return sorted(files | set(Path(components.__file__).parent.glob("*.py")))


def _code_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for path in code_files(module):
        digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class PrefixFeatureCache:
    """Prefix features of films on disk, one file per key: ``<folder>/<key>.pt`` mapping content hash to
    a float32 tensor. Missing films are computed and added; the file is replaced atomically."""

    def __init__(self, folder: str | Path, key: str) -> None:
        self.path = Path(folder) / f"{key}.pt"
        self.store: dict[str, torch.Tensor] = {}
        if self.path.is_file():
            try:
                self.store = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception:  # a file cut short by a kill: recompute
                self.store = {}
        self.added = 0

    def features(self, prefix: nn.Module, content_hashes: list[str], images: torch.Tensor, *,
                 device: torch.device, batch_size: int, context: Callable[[], Any] = contextlib.nullcontext,
                 progress: bool = True) -> torch.Tensor:
        """Features [N, ...] (float32, CPU) of films given as uint8 images [N, 1, H, W] in the order given."""
        missing = [i for i, h in enumerate(content_hashes) if h not in self.store]
        if missing:
            was_training = prefix.training
            prefix.eval()
            batches = [missing[i:i + batch_size] for i in range(0, len(missing), batch_size)]
            with torch.no_grad():
                for batch in progress_bar(batches, f"caching frozen features of {len(missing)} films",
                                          enabled=progress):
                    x = images[batch].to(device).float().div_(255.0)
                    with context():
                        out = prefix(x).float().cpu()
                    for i, row in zip(batch, out):
                        self.store[content_hashes[i]] = row.clone()
            prefix.train(was_training)
            self.added += len(missing)
        return torch.stack([self.store[h] for h in content_hashes])

    def save(self) -> None:
        """Write the file when films were added (atomically: a kill leaves the previous file)."""
        if self.added:
            atomic_write(self.path, lambda tmp: torch.save(self.store, tmp))
            self.added = 0


def cache_prefix_features(prefix: FrozenPrefix, datasets: Iterable[Any], folder: Path, *, device: torch.device,
                          precision: str, context: Callable[[], Any], batch_size: int, extra: dict[str, Any],
                          write: bool = True, progress: bool = True) -> tuple[str, int]:
    """Give every dataset (with ``films``, ``images`` and ``set_inputs``) the prefix features of its films.

    Returns the cache key and how many films had to be computed now. ``write=False`` (DDP ranks but the
    first) computes without saving.
    """
    prefix.module.to(device)
    key = prefix_key(prefix, device=device, precision=precision, extra=extra)
    cache = PrefixFeatureCache(folder, key)
    computed = 0
    for dataset in datasets:
        before = cache.added
        dataset.set_inputs(cache.features(prefix.module, [f.content_hash for f in dataset.films], dataset.images,
                                          device=device, batch_size=batch_size, context=context,
                                          progress=progress))
        computed += cache.added - before
    if write:
        cache.save()
    return key, computed


def serve_cached_prefix(mode: str, net: nn.Module, module: ClassificationModule, trainer: L.Trainer,
                        datamodule: CohortDataModule, writer: bool, progress: bool) -> str | None:
    """Serve the frozen prefix's cached features instead of images where that is valid (``feature_cache``);
    returns the cache key, or None when the films go through the whole net. ``writer``: this process saves the
    cache and reports (rank 0)."""
    prefix = plan_prefix_cache(net, mode)
    if prefix is None or not any(p.requires_grad for p in net.parameters()):
        return None  # nothing trains: the test films go through once, a cache would only add the other splits
    started = time.perf_counter()
    key, computed = cache_prefix_features(
        prefix, datamodule.datasets.values(), datamodule.cohort_folder / CACHE_DIR,
        device=trainer.strategy.root_device, precision=str(trainer.precision),
        context=trainer.precision_plugin.forward_context, batch_size=datamodule.eval_batch_size,
        extra={"preprocessing": datamodule.cohort_identity()["preprocessing"]}, write=writer,
        progress=writer and progress)
    module.from_prefix = True
    if writer:
        films = sum(len(ds) for ds in datamodule.datasets.values())
        say(f"frozen-prefix features of {films} films from the cache ({computed} computed now, "
            f"{time.perf_counter() - started:.1f} s; {CACHE_DIR}/{key}.pt)")
    return key
