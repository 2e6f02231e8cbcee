"""Tiny CLIP and tokenizers: offline, deterministic, and loaded back like real weights."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPModel

from pneumollm.models.components.pretrained import load_pretrained
from pneumollm.models.tiny_text import (
    MARKER,
    build_tiny_clip,
    save_tiny_clip,
    save_tiny_llama_tokenizer,
    tiny_clip_path,
    words_missing,
)

PROMPTS = ["Normal chest radiograph", "Pneumoconiosis chest radiograph", "a photo of a normal chest radiograph."]


def test_save_and_load_round_trip_gives_identical_outputs(tmp_path) -> None:
    model, tokenizer = build_tiny_clip(seed=0)
    folder = save_tiny_clip(tmp_path / "clip", seed=0)
    loaded = load_pretrained(CLIPModel, folder).eval()
    loaded_tok = load_pretrained(AutoTokenizer, folder)

    ids = tokenizer(PROMPTS, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, loaded_tok(PROMPTS, padding=True, return_tensors="pt")["input_ids"])
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        for get in ("get_text_features", "get_image_features"):
            kwargs = {"input_ids": ids} if get == "get_text_features" else {"pixel_values": pixels}
            torch.testing.assert_close(getattr(loaded, get)(**kwargs).pooler_output,
                                       getattr(model, get)(**kwargs).pooler_output, rtol=0, atol=0)
    assert loaded.config.text_config.eos_token_id == loaded_tok.eos_token_id


def test_tiny_clip_is_deterministic_and_written_once(tmp_path) -> None:
    a, b = save_tiny_clip(tmp_path / "a"), save_tiny_clip(tmp_path / "b")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert tiny_clip_path(str(tmp_path / "a")) == str(a)
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp
    assert (a / MARKER).is_file()
    other_seed = load_file(save_tiny_clip(tmp_path / "c", seed=1) / "model.safetensors")
    assert any(not torch.equal(wa[k], other_seed[k]) for k in wa)


def test_default_cache_folder_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PNEUMOLLM_TINY_DIR", str(tmp_path / "cache"))
    assert tiny_clip_path().startswith(str(tmp_path / "cache"))


def test_tiny_clip_tokenizer_knows_every_prompt_word(tmp_path) -> None:
    tokenizer = load_pretrained(AutoTokenizer, save_tiny_clip(tmp_path / "clip"))
    assert words_missing(tokenizer, [*PROMPTS, "X X X X"]) == []
    assert words_missing(tokenizer, ["a photo of a cat"]) == ["cat"]
    ids = tokenizer("Normal chest radiograph")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id == len(tokenizer) - 1  # as in CLIP, the end token has the largest id


def test_tiny_llama_tokenizer_scores_yes_and_no_as_single_tokens(tmp_path) -> None:
    tokenizer = load_pretrained(AutoTokenizer, save_tiny_llama_tokenizer(tmp_path / "llama"))
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"] for w in ("Yes", "No"))
    assert len(yes) == 1 and len(no) == 1 and yes != no
    question = tokenizer("Does the patient have pneumoconiosis?")["input_ids"]
    assert question[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in question


def test_the_staged_words_leave_the_binary_prompts_features_as_they_were() -> None:
    from pneumollm.models.tiny_text import CLIP_WORDS, build_tiny_clip, build_tiny_clip_tokenizer, tiny_clip_config

    model, tokenizer = build_tiny_clip(0)
    base = build_tiny_clip_tokenizer(CLIP_WORDS)  # the vocabulary before the staged prompts' words
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        before = CLIPModel(tiny_clip_config(base)).eval()
    prompts = ["Normal chest radiograph", "Pneumoconiosis chest radiograph"]

    def features(clip: CLIPModel, tok) -> torch.Tensor:
        with torch.no_grad():
            out = clip.get_text_features(**tok(prompts, padding="max_length", max_length=32, return_tensors="pt"))
        return out if torch.is_tensor(out) else out.pooler_output

    assert torch.equal(features(model, tokenizer), features(before, base))
    staged = tokenizer(["Stage 2 pneumoconiosis chest radiograph"])["input_ids"][0]
    assert tokenizer.unk_token_id not in staged and len(tokenizer) > len(base)


def test_the_tiny_llama_tokenizer_asks_the_staged_question_within_the_tiny_vocabulary(tmp_path) -> None:
    from pneumollm.models.task_texts import STAGE_QUESTION, answers
    from pneumollm.models.tiny import TINY_LLAMA

    tokenizer = load_pretrained(AutoTokenizer, save_tiny_llama_tokenizer(tmp_path / "llama"))
    assert len(tokenizer) <= TINY_LLAMA["vocab_size"]
    pieces = tokenizer(" ".join([STAGE_QUESTION, *answers("multiclass", None, None)]))["input_ids"]
    assert tokenizer.unk_token_id not in pieces
