"""Meta-format LLaMA <-> Hugging Face ``LlamaForCausalLM`` folders, tensor for tensor in the stored dtype.

``to_hf`` writes ``config.json``, safetensors shard(s) (with ``model.safetensors.index.json`` when there are
several) and a copy of ``tokenizer.model``; ``to_meta`` writes ``params.json`` and one ``consolidated.00.pth``.
Besides renaming, the only change to the numbers is a reordering of the rows of ``wq``/``wk``: Meta's rotary
embedding rotates interleaved pairs (0, 1), (2, 3), ... of each head, Hugging Face's rotates the halves (i, i + d/2).
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pneumollm.models.weights.meta_checkpoint import (
    PARAMS_FILE,
    TOKENIZER_FILE,
    LlamaConversionError,
    MetaCheckpoint,
    MetaParams,
    meta_keys,
    mlp_width,
)
from pneumollm.utils.io import atomic_folder
from pneumollm.utils.progress import progress_bar

if TYPE_CHECKING:
    from transformers import LlamaConfig

DEFAULT_MAX_SHARD_SIZE = "2GB"  # peak memory of to_hf is about one output shard
DEFAULT_MAX_POSITIONS = 2048  # LLaMA-1's context; params.json rarely records it (max_seq_len)
TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
HF_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # a buffer old transformers versions saved; recomputed on load


@dataclass(frozen=True)
class ConversionSummary:
    """What a conversion wrote."""

    out_dir: Path
    tensors: int
    dtype: torch.dtype
    bytes_on_disk: int
    seconds: float
    files: tuple[str, ...]


def meta_to_hf_name(key: str) -> str:
    """``layers.3.attention.wq.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (and the top-level ones)."""
    if key in TOP_NAMES:
        return TOP_NAMES[key]
    _, layer, suffix = key.split(".", 2)
    return f"model.layers.{layer}.{LAYER_NAMES[suffix]}"


def hf_to_meta_name(name: str) -> str | None:
    """The inverse of ``meta_to_hf_name`` (``None`` for a name it does not know)."""
    for meta, hf in TOP_NAMES.items():
        if name == hf:
            return meta
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        for meta, hf in LAYER_NAMES.items():
            if parts[3] == hf:
                return f"layers.{parts[2]}.{meta}"
    return None


def interleaved_to_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder the rows of Meta's ``wq``/``wk`` (rotary pairs interleaved) to Hugging Face's (pairs in halves)."""
    rows, cols = weight.shape
    return weight.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def halves_to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of ``interleaved_to_halves``."""
    rows, cols = weight.shape
    return weight.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_config(params: MetaParams, vocab_size: int, dtype: torch.dtype,
              max_position_embeddings: int | None = None) -> LlamaConfig:
    """The ``LlamaConfig`` of a Meta model (``architectures=["LlamaForCausalLM"]``, ``dtype`` as stored)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=params.dim, intermediate_size=params.hidden_dim, num_hidden_layers=params.n_layers,
        num_attention_heads=params.n_heads, num_key_value_heads=params.n_kv_heads, vocab_size=vocab_size,
        rms_norm_eps=params.norm_eps, rope_theta=params.rope_theta, hidden_act="silu", tie_word_embeddings=False,
        max_position_embeddings=max_position_embeddings or params.max_seq_len or DEFAULT_MAX_POSITIONS,
        architectures=["LlamaForCausalLM"], dtype=dtype)


def check_output_folder(out_dir: Path, source: Path, force: bool) -> None:
    """Refuse writing over a non-empty folder (unless ``force``) or over or around the input."""
    out, src = out_dir.expanduser().resolve(), source.expanduser().resolve()
    if out == src or src.is_relative_to(out) or out.is_relative_to(src):
        raise LlamaConversionError(f"{out_dir}: is the input folder {source} or lies inside or around it; write "
                                   "the converted weights to a folder of their own (e.g. a sibling ending in -hf)")
    if out.exists() and not out.is_dir():
        raise LlamaConversionError(f"{out_dir}: exists and is not a folder. Choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise LlamaConversionError(f"{out_dir}: exists and is not empty. Choose another output folder, or pass "
                                   "--force to replace it")


def check_disk_space(out_dir: Path, needed: int) -> None:
    """Refuse early when the output's file system cannot hold ``needed`` bytes."""
    where = out_dir.expanduser().resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if needed > free:
        raise LlamaConversionError(f"{out_dir}: its disk has {free / 1e9:.1f} GB free but the converted weights "
                                   f"need {needed / 1e9:.1f} GB. Free some space or choose a folder on another disk")


def to_hf(meta_dir: str | Path, out_dir: str | Path, *, force: bool = False,
          max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, max_position_embeddings: int | None = None,
          progress: bool = True) -> ConversionSummary:
    """Convert a Meta folder into a Hugging Face ``LlamaForCausalLM`` folder at ``out_dir`` (written atomically).

    Every tensor keeps its stored dtype. Shards are written one at a time from the memory-mapped input, so the
    memory needed is about one output shard (``max_shard_size``), not the whole model.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    start = time.perf_counter()
    meta_dir, out_dir = Path(meta_dir), Path(out_dir)
    check_output_folder(out_dir, meta_dir, force)
    checkpoint = MetaCheckpoint(meta_dir)
    check_disk_space(out_dir, checkpoint.nbytes())
    params = checkpoint.params
    sources = {meta_to_hf_name(k): k for k in checkpoint.keys}
    placeholders = {name: torch.empty(checkpoint.shapes[key], dtype=checkpoint.shards[0][key].dtype, device="meta")
                    for name, key in sources.items()}
    split = split_torch_state_dict_into_shards(placeholders, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)

    def converted(name: str) -> torch.Tensor:
        key = sources[name]
        tensor = checkpoint.tensor(key)
        if key.endswith("attention.wq.weight"):
            tensor = interleaved_to_halves(tensor, params.n_heads)
        elif key.endswith("attention.wk.weight"):
            tensor = interleaved_to_halves(tensor, params.n_kv_heads)
        return tensor.contiguous()

    order = [(file, name) for file, names in split.filename_to_tensors.items() for name in names]
    with atomic_folder(out_dir, replace=force) as staging:
        pending: dict[str, torch.Tensor] = {}
        for file, name in progress_bar(order, f"converting {meta_dir.name}", enabled=progress):
            pending[name] = converted(name)
            if len(pending) == len(split.filename_to_tensors[file]):
                save_file(pending, staging / file, metadata={"format": "pt"})
                pending = {}
        if split.is_sharded:
            index = {"metadata": {**split.metadata, "total_size": checkpoint.nbytes()},
                     "weight_map": split.tensor_to_filename}
            (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        hf_config(params, checkpoint.vocab_size, checkpoint.dtype, max_position_embeddings).save_pretrained(staging)
        if (meta_dir / TOKENIZER_FILE).is_file():
            shutil.copy2(meta_dir / TOKENIZER_FILE, staging / TOKENIZER_FILE)
        files = tuple(sorted(p.name for p in staging.iterdir()))
        size = sum(p.stat().st_size for p in staging.iterdir())
    return ConversionSummary(out_dir, len(order), checkpoint.dtype, size, time.perf_counter() - start, files)


def meta_mlp_params(dim: int, hidden: int) -> tuple[int, float | None]:
    """``multiple_of`` (and ``ffn_dim_multiplier`` when needed) with which Meta's formula gives MLP width ``hidden``.

    Prefers the largest power of two (LLaMA-7B: dim 4096, width 11008 -> 256) and no multiplier.
    """
    for exponent in range(12, -1, -1):
        if mlp_width(dim, 2 ** exponent, None) == hidden:
            return 2 ** exponent, None
    base = int(2 * 4 * dim / 3)
    if hidden >= base:
        return hidden, None  # one multiple of `hidden` covers the base width
    multiplier = hidden / base
    if mlp_width(dim, hidden, multiplier) == hidden:
        return hidden, multiplier
    raise ValueError(f"no Meta MLP parameters give width {hidden} for dim {dim}")


def _hf_tensor_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise LlamaConversionError(f"{index}: not a safetensors index ({err}). Save the model again with "
                                       "save_pretrained") from err
        files = [hf_dir / f for f in sorted(set(weight_map.values()))]
    else:
        files = [hf_dir / "model.safetensors"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise LlamaConversionError(f"{hf_dir}: no safetensors weights ({missing} missing). Give a Hugging Face "
                                   "folder saved with save_pretrained (safetensors), or download it again")
    return files


def _meta_params_from_hf(hf_dir: Path) -> tuple[MetaParams, bool]:
    """Meta's params for the ``LlamaConfig`` in ``hf_dir``, refusing what Meta's format cannot express."""
    from transformers import LlamaConfig

    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise LlamaConversionError(f"{hf_dir}: no config.json, so this is not a Hugging Face model folder. "
                                   "Give the folder written by save_pretrained (or pneumollm-convert-llama)")
    config = LlamaConfig.from_json_file(str(config_path))
    problems = []
    if config.model_type != "llama":
        problems.append(f"model_type is {config.model_type!r}, not 'llama'")
    if config.hidden_act != "silu":
        problems.append(f"hidden_act is {config.hidden_act!r}, not 'silu'")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("it has attention or MLP biases")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size:
        problems.append(f"head_dim {head_dim} x {config.num_attention_heads} heads is not hidden_size")
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        problems.append(f"its rotary embedding is scaled ({rope.get('rope_type')})")
    if problems:
        raise LlamaConversionError(f"{config_path}: Meta's LLaMA format cannot express this model: "
                                   f"{'; '.join(problems)}. Keep it in Hugging Face format")
    multiple_of, multiplier = meta_mlp_params(config.hidden_size, config.intermediate_size)
    params = MetaParams(dim=config.hidden_size, n_layers=config.num_hidden_layers,
                        n_heads=config.num_attention_heads, n_kv_heads=config.num_key_value_heads,
                        vocab_size=config.vocab_size, multiple_of=multiple_of, ffn_dim_multiplier=multiplier,
                        norm_eps=config.rms_norm_eps, rope_theta=float(rope.get("rope_theta", 10000.0)),
                        max_seq_len=config.max_position_embeddings)
    return params, bool(config.tie_word_embeddings)


def to_meta(hf_dir: str | Path, out_dir: str | Path, *, force: bool = False,
            progress: bool = True) -> ConversionSummary:
    """Convert a Hugging Face Llama folder into Meta's format (``params.json`` + one ``consolidated.00.pth``).

    Holds the whole model in memory once (``torch.save`` writes one file); dtypes are kept.
    """
    from safetensors import safe_open

    start = time.perf_counter()
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    check_output_folder(out_dir, hf_dir, force)
    params, tied = _meta_params_from_hf(hf_dir)
    files = _hf_tensor_files(hf_dir)
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(f), framework="pt")) for f in files]
        located = [(file, handle, name) for file, handle in zip(files, handles) for name in sorted(handle.keys())]
        state = {}
        for file, handle, name in progress_bar(located, f"converting {hf_dir.name}", enabled=progress):
            if name.endswith(HF_IGNORED_SUFFIXES):
                continue
            key = hf_to_meta_name(name)
            if key is None:
                raise LlamaConversionError(f"{file}: unknown tensor {name!r} (not part of a Llama decoder with an "
                                           "LM head). Keep this model in Hugging Face format")
            tensor = handle.get_tensor(name)
            if key.endswith("attention.wq.weight"):
                tensor = halves_to_interleaved(tensor, params.n_heads).contiguous()
            elif key.endswith("attention.wk.weight"):
                tensor = halves_to_interleaved(tensor, params.n_kv_heads).contiguous()
            state[key] = tensor
    if "output.weight" not in state and tied and "tok_embeddings.weight" in state:
        state["output.weight"] = state["tok_embeddings.weight"].clone()
    expected = meta_keys(params.n_layers)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise LlamaConversionError(
            f"{hf_dir}: its tensors do not match config.json's {params.n_layers}-layer LlamaForCausalLM (missing "
            f"{[meta_to_hf_name(k) for k in missing[:3]]}, extra {[meta_to_hf_name(k) for k in extra[:3]]}). "
            "Give a complete LlamaForCausalLM folder (with its LM head) saved with save_pretrained")
    dtypes = [t.dtype for t in state.values()]
    dtype = max(set(dtypes), key=dtypes.count)
    with atomic_folder(out_dir, replace=force) as staging:
        torch.save(state, staging / "consolidated.00.pth")
        (staging / PARAMS_FILE).write_text(json.dumps(params.to_json(), indent=2) + "\n")
        if (hf_dir / TOKENIZER_FILE).is_file():
            shutil.copy2(hf_dir / TOKENIZER_FILE, staging / TOKENIZER_FILE)
        written = tuple(sorted(p.name for p in staging.iterdir()))
        size = sum(p.stat().st_size for p in staging.iterdir())
    return ConversionSummary(out_dir, len(state), dtype, size, time.perf_counter() - start, written)

