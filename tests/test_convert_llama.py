"""pneumollm-convert-llama: Meta-format LLaMA folders become Hugging Face folders that the trunk loads and that
compute what Meta's own model computes; HF -> Meta -> HF is lossless; what cannot be converted is refused."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from pneumollm.cli.convert_llama import main
from pneumollm.models.components.emitter import InformationEmitter
from pneumollm.models.components.llm import LlamaTrunk
from pneumollm.models.components.pretrained import WeightsNotFoundError, load_pretrained
from pneumollm.models.weights import meta_llama
from pneumollm.models.weights.meta_checkpoint import LlamaConversionError, mlp_width
from pneumollm.models.weights.meta_llama import to_hf, to_meta
from pneumollm.paths import REPO_ROOT

TOP_SPLIT = {"tok_embeddings.weight": 1, "output.weight": 0, "norm.weight": None, "rope.freqs": None}
LAYER_SPLIT = {"attention.wq.weight": 0, "attention.wk.weight": 0, "attention.wv.weight": 0,
               "attention.wo.weight": 1, "feed_forward.w1.weight": 0, "feed_forward.w2.weight": 1,
               "feed_forward.w3.weight": 0, "attention_norm.weight": None, "ffn_norm.weight": None}
VOCAB = 40


def tiny_params(**changes: Any) -> dict[str, Any]:
    """A LLaMA-1 style params.json: vocab_size -1, MLP width from multiple_of (64 -> 192)."""
    return {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 32, "norm_eps": 1e-5, "vocab_size": -1,
            **changes}


def random_meta_state(params: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.float32,
                      rope_freqs: bool = True) -> dict[str, torch.Tensor]:
    """A random Meta state dict for ``params`` (norm weights near 1 but not 1, so a mix-up shows)."""
    g = torch.Generator().manual_seed(seed)
    dim, heads = params["dim"], params["n_heads"]
    kv = params.get("n_kv_heads", heads) * dim // heads
    hidden = mlp_width(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))

    def weight(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) / math.sqrt(shape[-1])).to(dtype)

    def norm() -> torch.Tensor:
        return (1 + 0.2 * torch.randn(dim, generator=g)).to(dtype)

    state = {"tok_embeddings.weight": weight(VOCAB, dim), "norm.weight": norm(), "output.weight": weight(VOCAB, dim)}
    if rope_freqs:
        state["rope.freqs"] = torch.rand(dim // heads // 2, generator=g).to(dtype)
    for i in range(params["n_layers"]):
        state.update({f"layers.{i}.attention.wq.weight": weight(dim, dim), f"layers.{i}.attention.wk.weight":
                      weight(kv, dim), f"layers.{i}.attention.wv.weight": weight(kv, dim),
                      f"layers.{i}.attention.wo.weight": weight(dim, dim),
                      f"layers.{i}.feed_forward.w1.weight": weight(hidden, dim),
                      f"layers.{i}.feed_forward.w2.weight": weight(dim, hidden),
                      f"layers.{i}.feed_forward.w3.weight": weight(hidden, dim),
                      f"layers.{i}.attention_norm.weight": norm(), f"layers.{i}.ffn_norm.weight": norm()})
    return state


def split_meta_state(state: dict[str, torch.Tensor], shards: int,
                     embeddings_dim: int = 1) -> list[dict[str, torch.Tensor]]:
    """Meta's model-parallel split: along the documented dims, the norms copied into every shard."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    for key, tensor in state.items():
        dim = TOP_SPLIT[key] if key in TOP_SPLIT else LAYER_SPLIT[key.split(".", 2)[2]]
        if key == "tok_embeddings.weight":
            dim = embeddings_dim
        pieces = [tensor] * shards if dim is None else list(torch.chunk(tensor, shards, dim=dim))
        for shard, piece in zip(out, pieces):
            shard[key] = piece.clone()  # a view would save its whole storage
    return out


def write_meta(folder: Path, params: dict[str, Any], shards: list[dict[str, torch.Tensor]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(params))
    for i, shard in enumerate(shards):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    (folder / "tokenizer.model").write_bytes(b"sentencepiece model stand-in")
    return folder


def meta_folder(tmp_path: Path, params: dict[str, Any] | None = None, shards: int = 1, **kwargs: Any) -> Path:
    params = params or tiny_params()
    return write_meta(tmp_path / "7B", params, split_meta_state(random_meta_state(params, **kwargs), shards))


def meta_reference(state: dict[str, torch.Tensor], params: dict[str, Any], tokens: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """Meta's LLaMA decoder written out: RMSNorm, interleaved complex rotary, additive mask, GQA, SwiGLU; the
    final-normed hidden states for input embeddings ``tokens`` at positions 0..T-1."""
    batch, length, dim = tokens.shape
    heads = params["n_heads"]
    kv_heads = params.get("n_kv_heads", heads)
    head_dim = dim // heads
    theta = params.get("rope_theta", 10000.0)
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(length).float(), freqs)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]  # [1, T, 1, head_dim / 2]

    def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + params["norm_eps"]) * weight

    def rotate(x: torch.Tensor) -> torch.Tensor:
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * freqs_cis).flatten(3)

    w = {k: v.float() for k, v in state.items()}
    h = tokens
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        x = rms_norm(h, w[p + "attention_norm.weight"])
        q = rotate((x @ w[p + "attention.wq.weight"].T).view(batch, length, heads, head_dim))
        k = rotate((x @ w[p + "attention.wk.weight"].T).view(batch, length, kv_heads, head_dim))
        v = (x @ w[p + "attention.wv.weight"].T).view(batch, length, kv_heads, head_dim)
        k, v = (t.repeat_interleave(heads // kv_heads, dim=2) for t in (k, v))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(2, 3) / math.sqrt(head_dim) + mask
        attended = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, length, dim)
        h = h + attended @ w[p + "attention.wo.weight"].T
        x = rms_norm(h, w[p + "ffn_norm.weight"])
        h = h + (F.silu(x @ w[p + "feed_forward.w1.weight"].T) * (x @ w[p + "feed_forward.w3.weight"].T)) \
            @ w[p + "feed_forward.w2.weight"].T
    return rms_norm(h, w["norm.weight"])


def trunk_vs_reference(out: Path, state: dict[str, torch.Tensor], params: dict[str, Any]) -> float:
    """Max |trunk - Meta reference| on emitter-masked random input embeddings."""
    trunk = LlamaTrunk(name_or_path=str(out), pretrained=True, frozen_dtype="float32", adapter={"kind": "none"},
                       attn_implementation="sdpa").eval()
    tokens = torch.randn(2, 10, params["dim"], generator=torch.Generator().manual_seed(1))
    mask = InformationEmitter()(6, 4)
    with torch.no_grad():
        got = trunk(tokens, mask)
    return (got - meta_reference(state, params, tokens, mask)).abs().max().item()


EQUIVALENCE_CASES = {
    "llama1": (tiny_params(), 1, 1),
    "gqa_theta_multiplier": (tiny_params(n_kv_heads=2, rope_theta=500000.0, ffn_dim_multiplier=1.3,
                                         vocab_size=VOCAB), 1, 1),
    "two_shards": (tiny_params(), 2, 1),
    "gqa_two_shards_vocab_split": (tiny_params(n_kv_heads=2, rope_theta=500000.0, vocab_size=VOCAB), 2, 0),
}


@pytest.mark.parametrize("case", list(EQUIVALENCE_CASES))
def test_the_converted_trunk_computes_what_metas_model_computes(tmp_path: Path, case: str) -> None:
    params, shards, embeddings_dim = EQUIVALENCE_CASES[case]
    state = random_meta_state(params)
    meta = write_meta(tmp_path / "meta", params, split_meta_state(state, shards, embeddings_dim))
    summary = to_hf(meta, tmp_path / "hf", max_shard_size="40KB", progress=False)
    assert summary.tensors == len(state) - 1 and summary.dtype == torch.float32  # rope.freqs is recomputed
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file() and len(
        list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == VOCAB
    assert config["num_key_value_heads"] == params.get("n_kv_heads", params["n_heads"])
    assert config["intermediate_size"] == mlp_width(64, 32, params.get("ffn_dim_multiplier"))
    difference = trunk_vs_reference(tmp_path / "hf", state, params)
    print(f"{case}: max abs difference {difference:.2e}")
    assert difference < 1e-5


def test_without_the_rotary_row_order_the_outputs_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The equivalence test notices a missing q/k permutation (so passing it means the permutation is right)."""
    params = tiny_params()
    state = random_meta_state(params)
    monkeypatch.setattr(meta_llama, "interleaved_to_halves", lambda weight, heads: weight)
    to_hf(write_meta(tmp_path / "meta", params, [state]), tmp_path / "hf", progress=False)
    assert trunk_vs_reference(tmp_path / "hf", state, params) > 1e-2


def test_fp16_stays_fp16_and_shards_are_written_one_at_a_time(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[int] = []
    save = safetensors.torch.save_file

    def recording_save(tensors: dict[str, torch.Tensor], filename: Any, metadata: Any = None) -> None:
        written.append(sum(t.nbytes for t in tensors.values()))
        save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", recording_save)
    meta = meta_folder(tmp_path, dtype=torch.float16, shards=2)
    summary = to_hf(meta, tmp_path / "hf", max_shard_size="30KB", progress=False)
    files = sorted((tmp_path / "hf").glob("model-*.safetensors"))
    assert len(written) == len(files) > 2 and max(written) <= 30_000
    assert summary.dtype == torch.float16 and json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] \
        == "float16"
    assert all(t.dtype == torch.float16 for f in files for t in load_file(f).values())
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == b"sentencepiece model stand-in"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_hf_to_meta_to_hf_is_bit_identical(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    config = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512, rms_norm_eps=1e-6,
                         rope_theta=250000.0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(1.0, 0.2)  # not all ones, so a mix-up shows
    model.save_pretrained(tmp_path / "hf")
    to_meta(tmp_path / "hf", tmp_path / "meta", progress=False)
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params["n_kv_heads"] == 2 and mlp_width(64, params["multiple_of"], params.get("ffn_dim_multiplier")) == 176
    summary = to_hf(tmp_path / "meta", tmp_path / "back", progress=False)
    assert summary.dtype == dtype
    before = load_file(tmp_path / "hf" / "model.safetensors")
    after = load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == dtype for k in before)
    original, again = (LlamaConfig.from_pretrained(tmp_path / d) for d in ("hf", "back"))
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
                  "hidden_act", "tie_word_embeddings", "dtype"):
        assert getattr(again, field) == getattr(original, field), field


def test_meta_to_hf_to_meta_keeps_every_tensor(tmp_path: Path) -> None:
    params = tiny_params(n_kv_heads=2)
    state = random_meta_state(params, dtype=torch.bfloat16)
    to_hf(write_meta(tmp_path / "meta", params, [state]), tmp_path / "hf", progress=False)
    to_meta(tmp_path / "hf", tmp_path / "back", progress=False)
    back = torch.load(tmp_path / "back" / "consolidated.00.pth", weights_only=True)
    assert back.keys() == state.keys() - {"rope.freqs"}
    assert all(torch.equal(back[k], state[k]) for k in back)


@pytest.mark.parametrize(("dim", "hidden"), [(4096, 11008), (8192, 28672), (64, 176), (64, 100), (64, 171)])
def test_meta_mlp_params_reproduce_any_width(dim: int, hidden: int) -> None:
    multiple_of, multiplier = meta_llama.meta_mlp_params(dim, hidden)
    assert mlp_width(dim, multiple_of, multiplier) == hidden
    if (dim, hidden) == (4096, 11008):  # LLaMA-7B's params.json
        assert (multiple_of, multiplier) == (256, None)


# Refusals: each names the file and the fix.

def refusal(meta: Path, out: Path | None = None, **kwargs: Any) -> str:
    out = out or meta.parent / "hf"
    existed = out.exists()
    with pytest.raises(LlamaConversionError) as caught:
        to_hf(meta, out, progress=False, **kwargs)
    assert out.exists() == existed
    return str(caught.value)


def test_a_folder_without_params_json_is_refused(tmp_path: Path) -> None:
    meta = meta_folder(tmp_path)
    (meta / "params.json").unlink()
    message = refusal(meta)
    assert str(meta) in message and "no params.json" in message and "Point to the folder" in message


def test_a_folder_without_shards_is_refused(tmp_path: Path) -> None:
    meta = meta_folder(tmp_path)
    (meta / "consolidated.00.pth").unlink()
    message = refusal(meta)
    assert str(meta) in message and "no consolidated.NN.pth" in message and "download it again" in message


def test_a_missing_shard_is_refused(tmp_path: Path) -> None:
    meta = meta_folder(tmp_path, shards=2)
    (meta / "consolidated.01.pth").rename(meta / "consolidated.02.pth")
    message = refusal(meta)
    assert str(meta) in message and "consolidated.01.pth" in message and "Download the missing" in message


def test_shards_with_different_tensor_names_are_refused(tmp_path: Path) -> None:
    params = tiny_params()
    shards = split_meta_state(random_meta_state(params), 2)
    del shards[1]["layers.1.ffn_norm.weight"]
    meta = write_meta(tmp_path / "7B", params, shards)
    message = refusal(meta)
    assert str(meta / "consolidated.01.pth") in message and "layers.1.ffn_norm.weight" in message
    assert "download them again" in message


def test_a_replicated_tensor_that_differs_between_shards_is_refused(tmp_path: Path) -> None:
    params = tiny_params()
    shards = split_meta_state(random_meta_state(params), 2)
    shards[1]["layers.0.attention_norm.weight"] = shards[1]["layers.0.attention_norm.weight"] + 1
    meta = write_meta(tmp_path / "7B", params, shards)
    message = refusal(meta)
    assert str(meta / "consolidated.01.pth") in message and "layers.0.attention_norm.weight differs" in message
    assert "download them again" in message


def test_shapes_that_do_not_add_up_to_params_json_are_refused(tmp_path: Path) -> None:
    meta = meta_folder(tmp_path, shards=2)
    (meta / "params.json").write_text(json.dumps(tiny_params(multiple_of=256)))  # MLP width 256, stored 192
    message = refusal(meta)
    assert str(meta) in message and "feed_forward.w1.weight adds up to (192, 64)" in message
    assert "consolidated.00.pth (96, 64)" in message and "needs (256, 64)" in message
    assert "take both from the same model folder" in message


def test_an_unknown_tensor_is_refused(tmp_path: Path) -> None:
    params = tiny_params()
    state = random_meta_state(params)
    state["layers.0.attention.gate"] = torch.zeros(1)
    meta = write_meta(tmp_path / "7B", params, [state])
    message = refusal(meta)
    assert str(meta / "consolidated.00.pth") in message and "unknown tensor 'layers.0.attention.gate'" in message
    assert "tool made for them" in message


@pytest.mark.parametrize("content", ["list", "nested", "pickle"])
def test_a_pth_that_is_not_a_state_dict_is_refused(tmp_path: Path, content: str) -> None:
    meta = meta_folder(tmp_path)
    shard = meta / "consolidated.00.pth"
    if content == "list":
        torch.save([torch.zeros(2)], shard)
    elif content == "nested":
        torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, shard)
    else:
        torch.save({"w": torch.zeros(2), "optimizer": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)},
                   shard)
    message = refusal(meta)
    assert str(shard) in message and "Replace it with the file from Meta's download" in message


def test_scaled_rope_and_unknown_params_are_refused(tmp_path: Path) -> None:
    meta = meta_folder(tmp_path)
    (meta / "params.json").write_text(json.dumps(tiny_params(use_scaled_rope=True)))
    message = refusal(meta)
    assert str(meta / "params.json") in message and "use_scaled_rope" in message and "meta-llama/" in message
    (meta / "params.json").write_text(json.dumps(tiny_params(moe_args={"num_experts": 16})))
    message = refusal(meta)
    assert str(meta / "params.json") in message and "moe_args" in message and "tool made for them" in message


def test_a_non_empty_output_folder_needs_force_and_a_failed_run_leaves_nothing(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    meta = meta_folder(tmp_path)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "old.txt").write_text("old")
    message = refusal(meta, out)
    assert str(out) in message and "--force" in message and (out / "old.txt").exists()
    assert "input folder" in refusal(meta, meta / "hf")

    def broken_save(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        to_hf(meta, out, force=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["7B", "hf"] and (out / "old.txt").exists()
    monkeypatch.undo()
    to_hf(meta, out, force=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["7B", "hf"]


def test_loading_a_meta_folder_names_the_converter(tmp_path: Path) -> None:
    meta = meta_folder(tmp_path)
    with pytest.raises(WeightsNotFoundError) as caught:
        LlamaTrunk(name_or_path=str(meta), pretrained=True, frozen_dtype="float32")
    expected = f"pneumollm-convert-llama {meta} {meta}-hf"
    assert expected in str(caught.value) and f"llm.name_or_path={meta}-hf" in str(caught.value)
    with pytest.raises(WeightsNotFoundError, match="pneumollm-convert-llama"):
        load_pretrained(LlamaConfig, meta)


def test_the_cli_converts_both_ways_and_prints_what_to_use(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    meta = meta_folder(tmp_path, dtype=torch.float16)
    assert main([str(meta), str(tmp_path / "hf"), "--no-progress"]) == 0
    said = capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors",
                                                                  "tokenizer.model"]
    assert "21 tensors, float16" in said and f"llm.name_or_path={tmp_path / 'hf'}" in said
    assert main(["--to-meta", str(tmp_path / "hf"), str(tmp_path / "back"), "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["consolidated.00.pth", "params.json",
                                                                    "tokenizer.model"]
    assert "llm.name_or_path" not in capsys.readouterr().err  # only the Hugging Face folder is for the trunk
    with pytest.raises(SystemExit) as stop:
        main([str(meta), str(tmp_path / "hf"), "--no-progress"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'hf'}: exists and is not empty")


def test_the_cli_module_runs_as_a_command(tmp_path: Path) -> None:
    meta = meta_folder(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "pneumollm.cli.convert_llama", str(meta), str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"llm.name_or_path={tmp_path / 'hf'}" in done.stderr and (tmp_path / "hf" / "config.json").is_file()
