"""Meta's original LLaMA folders (``params.json`` + ``consolidated.NN.pth``): read lazily and checked.

The shards are memory-mapped (``torch.load(mmap=True, weights_only=True)``): nothing is read into memory until a
tensor is asked for, and ``MetaCheckpoint.tensor`` merges one tensor's model-parallel pieces at a time. Meta's
model-parallel layout: ``tok_embeddings`` is split along dim 1 (LLaMA-1/2) or dim 0 (LLaMA-3), ``output``, ``wq``,
``wk``, ``wv`` (also along the key/value heads of grouped-query attention), ``w1`` and ``w3`` along dim 0 (their
output rows), ``wo`` and ``w2`` along dim 1 (their input columns); the RMSNorm weights are copied into every shard.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from pneumollm.errors import UserError

PARAMS_FILE = "params.json"
SHARD_PATTERN = re.compile(r"consolidated\.(\d+)\.pth")
TOKENIZER_FILE = "tokenizer.model"

# Split dim of each tensor across model-parallel shards (None: the same copy in every shard).
TOP_SPLITS: dict[str, int | None] = {"tok_embeddings.weight": 1, "norm.weight": None, "output.weight": 0}
LAYER_SPLITS: dict[str, int | None] = {
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0,
    "feed_forward.w2.weight": 1,
    "feed_forward.w3.weight": 0,
    "attention_norm.weight": None,
    "ffn_norm.weight": None,
}
IGNORED_KEYS = frozenset({"rope.freqs"})  # LLaMA-1's rotary frequency buffer: recomputed from rope_theta
LAYER_KEY = re.compile(r"layers\.(\d+)\.(.+)")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
KNOWN_PARAMS_IGNORED = frozenset({"max_batch_size"})  # inference settings of Meta's generator, not the weights


class LlamaConversionError(UserError, ValueError):
    """Weights that cannot be converted as they are (names the file, the problem and the fix)."""


def is_meta_folder(folder: str | Path) -> bool:
    """True for a folder holding ``params.json`` and at least one ``consolidated.NN.pth``."""
    folder = Path(folder)
    return folder.is_dir() and (folder / PARAMS_FILE).is_file() and any(
        SHARD_PATTERN.fullmatch(p.name) for p in folder.glob("consolidated.*.pth"))


def conversion_hint(folder: Path) -> str:
    """Why a Meta folder cannot be loaded as it is, and the command that converts it."""
    out = folder.with_name(folder.name + "-hf")
    return (f"{folder} is a Meta-format LLaMA checkpoint ({PARAMS_FILE} + consolidated.*.pth), which transformers "
            f"cannot load. Convert it once with `pneumollm-convert-llama {shlex.quote(str(folder))} "
            f"{shlex.quote(str(out))}` and pass llm.name_or_path={out}")


@dataclass(frozen=True)
class MetaParams:
    """The architecture in ``params.json`` (Meta's ``ModelArgs``), with Meta's defaults for absent fields."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int  # -1 in LLaMA-1/2 (the tokenizer's size): read it from tok_embeddings
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """The SwiGLU MLP width, as Meta's ``FeedForward`` derives it from ``dim``."""
        return mlp_width(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @classmethod
    def read(cls, path: Path) -> MetaParams:
        """Parse and check ``params.json``."""
        fix = "Take params.json from the same Meta download as the consolidated.*.pth files"
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LlamaConversionError(f"{path}: cannot be read as JSON ({err}). {fix}") from err
        if not isinstance(raw, dict):
            raise LlamaConversionError(f"{path}: holds {type(raw).__name__}, not a JSON object. {fix}")
        if raw.get("use_scaled_rope"):
            raise LlamaConversionError(
                f"{path}: use_scaled_rope is true (Llama 3.1/3.2 long-context rotary scaling), whose scaling factor "
                "params.json does not record, so this converter cannot reproduce it. Use Meta's Hugging Face "
                "release of that model (meta-llama/... on the hub) instead")
        known = {f.name for f in fields(cls)} | KNOWN_PARAMS_IGNORED | {"use_scaled_rope"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise LlamaConversionError(
                f"{path}: unknown field(s) {unknown}; this converter knows the LLaMA-1/2/3 decoder fields "
                f"{sorted(f.name for f in fields(cls))}. Convert other Meta models with a tool made for them")
        missing = [k for k in ("dim", "n_layers", "n_heads") if k not in raw]
        if missing:
            raise LlamaConversionError(f"{path}: missing {missing}. {fix}")
        try:
            params = cls(
                dim=int(raw["dim"]), n_layers=int(raw["n_layers"]), n_heads=int(raw["n_heads"]),
                n_kv_heads=int(raw.get("n_kv_heads") or raw["n_heads"]), vocab_size=int(raw.get("vocab_size", -1)),
                multiple_of=int(raw.get("multiple_of", 256)),
                ffn_dim_multiplier=None if raw.get("ffn_dim_multiplier") is None else float(raw["ffn_dim_multiplier"]),
                norm_eps=float(raw.get("norm_eps", 1e-5)), rope_theta=float(raw.get("rope_theta", 10000.0)),
                max_seq_len=None if raw.get("max_seq_len") is None else int(raw["max_seq_len"]))
        except (TypeError, ValueError) as err:
            raise LlamaConversionError(f"{path}: a field is not a number ({err}). {fix}") from err
        if min(params.dim, params.n_layers, params.n_heads, params.n_kv_heads, params.multiple_of) <= 0:
            raise LlamaConversionError(f"{path}: dim, n_layers, n_heads, n_kv_heads and multiple_of must be "
                                       f"positive, got {params}. {fix}")
        if params.dim % params.n_heads or params.n_heads % params.n_kv_heads or params.head_dim % 2:
            raise LlamaConversionError(
                f"{path}: dim {params.dim}, n_heads {params.n_heads} and n_kv_heads {params.n_kv_heads} do not "
                "give an even head size shared by whole key/value groups. " + fix)
        return params

    def to_json(self) -> dict[str, Any]:
        """The fields as ``params.json`` holds them (absent optional ones left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in out.items() if v is not None}


def mlp_width(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's SwiGLU width: two thirds of 4 * dim, times the multiplier, rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def meta_keys(n_layers: int) -> list[str]:
    """A Meta LLaMA's tensor names in Meta's order (embeddings, layers, final norm, output)."""
    layers = [f"layers.{i}.{suffix}" for i in range(n_layers) for suffix in LAYER_SPLITS]
    return ["tok_embeddings.weight", *layers, "norm.weight", "output.weight"]


def shard_files(folder: Path) -> list[Path]:
    """``consolidated.00.pth`` .. ``consolidated.NN.pth`` in order, refusing gaps and an empty folder."""
    numbered = {int(m.group(1)): p for p in folder.glob("consolidated.*.pth")
                if (m := SHARD_PATTERN.fullmatch(p.name))}
    if not numbered:
        raise LlamaConversionError(
            f"{folder}: no consolidated.NN.pth next to params.json. Point to the folder of one model size from "
            "Meta's download (e.g. llama/7B, holding params.json and consolidated.00.pth), or download it again")
    gaps = sorted(set(range(len(numbered))) - set(numbered))
    if gaps or max(numbered) != len(numbered) - 1:
        expected = [f"consolidated.{i:02d}.pth" for i in range(max(numbered) + 1) if i not in numbered]
        raise LlamaConversionError(
            f"{folder}: the model-parallel shards are incomplete (missing {expected}). Download the missing "
            "shard(s) again")
    return [numbered[i] for i in sorted(numbered)]


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    """One ``consolidated.NN.pth`` as a memory-mapped state dict, refusing anything but a dict of tensors."""
    fix = "Replace it with the file from Meta's download (a dict of tensors saved with torch.save)"
    try:
        try:
            loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format
    except Exception as err:  # unpickling refusals, truncated archives, not a torch file at all
        raise LlamaConversionError(f"{path}: cannot be read as a tensor state dict ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0] if str(err) else ''}). {fix}") from err
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in loaded.items()):
        what = (f"a dict with entries {sorted(map(str, loaded))[:5]} that are not all tensors"
                if isinstance(loaded, dict) else f"a {type(loaded).__name__}")
        raise LlamaConversionError(f"{path}: holds {what}, not a Meta state dict of tensors. {fix}")
    return loaded


class MetaCheckpoint:
    """A checked Meta folder: its params, its memory-mapped shards and each tensor's merged shape."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise LlamaConversionError(f"{self.folder}: not a folder. Give the folder of one model size from "
                                       "Meta's download (holding params.json and consolidated.00.pth)")
        params_path = self.folder / PARAMS_FILE
        if not params_path.is_file():
            raise LlamaConversionError(
                f"{self.folder}: no params.json, so this is not a Meta-format LLaMA folder. Point to the folder of "
                "one model size from Meta's download (e.g. llama/7B, holding params.json and consolidated.00.pth); "
                "a Hugging Face folder (config.json) needs no conversion: pass it as llm.name_or_path")
        self.params = MetaParams.read(params_path)
        self.files = shard_files(self.folder)
        self.shards = [load_shard(p) for p in self.files]
        self.keys = self._check_keys()
        self.split_dims: dict[str, int | None] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._check_shapes()
        self._check_replicated()
        dtypes = [self.shards[0][k].dtype for k in self.keys]
        self.dtype = max(set(dtypes), key=dtypes.count)

    @property
    def vocab_size(self) -> int:
        return self.shapes["tok_embeddings.weight"][0]

    def tensor(self, key: str) -> torch.Tensor:
        """The whole tensor ``key``: the shard's memory-mapped tensor itself, or its shards concatenated."""
        parts = [shard[key] for shard in self.shards]
        dim = self.split_dims[key]
        return parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)

    def nbytes(self) -> int:
        """Bytes of the merged tensors (what a converted copy holds)."""
        dtype_size = {k: self.shards[0][k].element_size() for k in self.keys}
        return sum(math.prod(self.shapes[k]) * dtype_size[k] for k in self.keys)

    def _where(self, key: str) -> Iterator[tuple[Path, torch.Tensor]]:
        return ((path, shard[key]) for path, shard in zip(self.files, self.shards))

    def _check_keys(self) -> list[str]:
        first = set(self.shards[0])
        for path, shard in zip(self.files[1:], self.shards[1:]):
            if set(shard) != first:
                missing, extra = sorted(first - set(shard))[:5], sorted(set(shard) - first)[:5]
                raise LlamaConversionError(
                    f"{path}: its tensor names differ from {self.files[0].name}'s (missing {missing}, extra {extra}). "
                    "The shards come from different checkpoints or a download was cut short: download them again")
        expected = meta_keys(self.params.n_layers)
        for key in sorted(first - set(expected) - IGNORED_KEYS):
            layer = LAYER_KEY.fullmatch(key)
            if layer and layer.group(2) in LAYER_SPLITS:
                raise LlamaConversionError(
                    f"{self.files[0]}: holds {key!r} but {self.folder / PARAMS_FILE} says n_layers "
                    f"{self.params.n_layers}. params.json and the shards belong to different models: take both "
                    "from the same model folder")
            raise LlamaConversionError(
                f"{self.files[0]}: unknown tensor {key!r} (not part of a LLaMA-1/2/3 decoder). This converter "
                "handles Meta's LLaMA layout only; convert other models with a tool made for them")
        missing = [k for k in expected if k not in first]
        if missing:
            raise LlamaConversionError(
                f"{self.files[0]}: {len(missing)} tensor(s) missing, e.g. {missing[:3]}. The file is not a complete "
                "Meta LLaMA checkpoint for this params.json: download it again")
        for key in expected:
            tensor = self.shards[0][key]
            if tensor.dtype not in FLOAT_DTYPES:
                raise LlamaConversionError(
                    f"{self.files[0]}: {key} is {tensor.dtype}, not float16/bfloat16/float32 (a quantised "
                    "checkpoint?). Convert Meta's original floating-point weights")
        return expected

    def _check_shapes(self) -> None:
        p = self.params
        for key in self.keys:
            self.split_dims[key], self.shapes[key] = self._merged_shape(key)
        vocab = p.vocab_size if p.vocab_size > 0 else self.shapes["tok_embeddings.weight"][0]
        kv = p.n_kv_heads * p.head_dim
        expected = {"tok_embeddings.weight": (vocab, p.dim), "norm.weight": (p.dim,), "output.weight": (vocab, p.dim)}
        per_layer = {"attention.wq.weight": (p.dim, p.dim), "attention.wk.weight": (kv, p.dim),
                     "attention.wv.weight": (kv, p.dim), "attention.wo.weight": (p.dim, p.dim),
                     "feed_forward.w1.weight": (p.hidden_dim, p.dim), "feed_forward.w2.weight": (p.dim, p.hidden_dim),
                     "feed_forward.w3.weight": (p.hidden_dim, p.dim), "attention_norm.weight": (p.dim,),
                     "ffn_norm.weight": (p.dim,)}
        for key in self.keys:
            layer = LAYER_KEY.fullmatch(key)
            want = per_layer[layer.group(2)] if layer else expected[key]
            if self.shapes[key] != want:
                pieces = ", ".join(f"{path.name} {tuple(t.shape)}" for path, t in self._where(key))
                raise LlamaConversionError(
                    f"{self.folder}: {key} adds up to {self.shapes[key]} ({pieces}) but {PARAMS_FILE} (dim {p.dim}, "
                    f"n_heads {p.n_heads}, n_kv_heads {p.n_kv_heads}, MLP width {p.hidden_dim} from multiple_of "
                    f"{p.multiple_of}, ffn_dim_multiplier {p.ffn_dim_multiplier}) needs {want}. params.json and the "
                    "consolidated.*.pth files do not belong together: take both from the same model folder")

    def _merged_shape(self, key: str) -> tuple[int | None, tuple[int, ...]]:
        shapes = [tuple(t.shape) for t in (shard[key] for shard in self.shards)]
        layer = LAYER_KEY.fullmatch(key)
        dim = LAYER_SPLITS[layer.group(2)] if layer else TOP_SPLITS[key]
        if key == "tok_embeddings.weight" and len(shapes) > 1 and all(len(s) == 2 and s[1] == self.params.dim
                                                                      for s in shapes):
            dim = 0  # LLaMA-3 splits the embeddings along the vocabulary
        if len(shapes) == 1 or dim is None:
            odd = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
            if odd is not None:
                raise LlamaConversionError(
                    f"{self.files[odd]}: {key} has shape {shapes[odd]} but {shapes[0]} in {self.files[0].name}; it "
                    "must be the same in every shard. Download the shards again")
            return dim, shapes[0]
        ranks = {len(s) for s in shapes}
        others = {s[:dim] + s[dim + 1:] for s in shapes}
        if ranks != {2} or len(others) > 1:
            pieces = ", ".join(f"{path.name} {s}" for path, s in zip(self.files, shapes))
            raise LlamaConversionError(
                f"{self.folder}: the shards of {key} cannot be joined along dim {dim} ({pieces}). The shards come "
                "from different checkpoints: download them again")
        merged = list(shapes[0])
        merged[dim] = sum(s[dim] for s in shapes)
        return dim, tuple(merged)

    def _check_replicated(self) -> None:
        for key in self.keys:
            if self.split_dims[key] is not None or len(self.shards) == 1:
                continue
            first = self.shards[0][key]
            for path, tensor in list(self._where(key))[1:]:
                if not torch.equal(tensor, first):
                    raise LlamaConversionError(
                        f"{path}: {key} differs from the copy in {self.files[0].name}, but every shard must hold "
                        "the same one. The shards come from different checkpoints or are damaged: download them "
                        "again")
