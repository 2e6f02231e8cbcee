"""Tiny random CLIP (text + vision) and tiny tokenizers, built offline and saved like real weights.

The ``tiny`` sizes of the CLIP arms and the tests load these folders through the same
``load_pretrained`` code path as ``openai/clip-vit-large-patch14``. Tokenizers are word-level
(``tokenizers`` library) over the few words the suite's prompts need, wrapped as transformers fast
tokenizers. Folders are written once per cache directory (default ``~/.cache/pneumollm/tiny``,
``PNEUMOLLM_TINY_DIR`` overrides it) and re-created identically from a fixed seed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

# Bump when the tiny artefacts change, so stale caches are rebuilt.
TINY_FORMAT_VERSION = 2  # 2: the words of the staged prompts and questions
MARKER = "pneumollm_tiny.json"

CLIP_BOS, CLIP_EOS, CLIP_PAD, CLIP_UNK = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"
CLIP_WORDS: tuple[str, ...] = (
    "normal", "pneumoconiosis", "chest", "radiograph", "x", "a", "photo", "of", "an", "image", "the",
    "lung", "lungs", "film", "ray", "-", ".", ",",
)
CLIP_STAGE_WORDS: tuple[str, ...] = ("stage", "0", "1", "2", "3", "i", "ii", "iii")  # staged prompts (issue 14)
LLAMA_BOS, LLAMA_EOS, LLAMA_UNK = "<s>", "</s>", "<unk>"
LLAMA_WORDS: tuple[str, ...] = (
    "Yes", "No", "yes", "no", "Does", "the", "patient", "have", "pneumoconiosis", "?", "Image", "Question",
    "Answer", "Response", "Instruction", "Input", ":", ".", ",", "a", "chest", "radiograph", "normal",
    "Which", "category", "0", "1", "2", "3",  # the staged question and answers; the tiny LLM has 32 ids in all
)


def tiny_cache_dir() -> Path:
    """Root folder of the tiny artefacts (``PNEUMOLLM_TINY_DIR`` or ``~/.cache/pneumollm/tiny``)."""
    return Path(os.environ.get("PNEUMOLLM_TINY_DIR", "~/.cache/pneumollm/tiny")).expanduser()


def build_tiny_clip_tokenizer(words: Sequence[str] = (*CLIP_WORDS, *CLIP_STAGE_WORDS)) -> PreTrainedTokenizerFast:
    """Lower-casing word-level tokenizer with CLIP's start/end tokens (end token = largest id, as in CLIP)."""
    vocab_list = [CLIP_UNK, CLIP_PAD, *words, CLIP_BOS, CLIP_EOS]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=CLIP_UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_BOS} $A {CLIP_EOS}", special_tokens=[(CLIP_BOS, vocab[CLIP_BOS]), (CLIP_EOS, vocab[CLIP_EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=CLIP_BOS, eos_token=CLIP_EOS, pad_token=CLIP_PAD, unk_token=CLIP_UNK,
        model_max_length=32,
    )


def build_tiny_llama_tokenizer() -> PreTrainedTokenizerFast:
    """Case-sensitive word-level tokenizer with Llama's special ids (<unk>=0, <s>=1, </s>=2), BOS prepended."""
    vocab_list = [LLAMA_UNK, LLAMA_BOS, LLAMA_EOS, *LLAMA_WORDS]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=LLAMA_UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA_BOS} $A", special_tokens=[(LLAMA_BOS, vocab[LLAMA_BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=LLAMA_BOS, eos_token=LLAMA_EOS, unk_token=LLAMA_UNK,
        pad_token=LLAMA_UNK, model_max_length=64,
    )


def tiny_clip_config(tokenizer: PreTrainedTokenizerFast | None = None) -> CLIPConfig:
    """A CLIPConfig with two-layer width-32 towers (224 px, 32 px patches) matching the tiny tokenizer."""
    tokenizer = tokenizer or build_tiny_clip_tokenizer()
    text = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=224, patch_size=32)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32, logit_scale_init_value=2.6592)


def clip_vit_l14_config() -> CLIPConfig:
    """The architecture of ``openai/clip-vit-large-patch14`` (for counting parameters on the meta device)."""
    text = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=224, patch_size=14, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=768, logit_scale_init_value=2.6592)


def _save_once(target: Path, kind: str, write: Callable[[Path], None]) -> Path:
    """Write an artefact folder atomically (temp folder + rename) unless a current one is there."""
    marker = target / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("version") == TINY_FORMAT_VERSION:
                return target
        except (OSError, json.JSONDecodeError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(staging)
        (staging / MARKER).write_text(json.dumps({"kind": kind, "version": TINY_FORMAT_VERSION}))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its folder is equivalent
            if not (target / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_clip(seed: int = 0) -> tuple[CLIPModel, PreTrainedTokenizerFast]:
    """A freshly initialised tiny CLIPModel (from ``seed``) and its tokenizer, in memory.

    The model is initialised over the original vocabulary (``CLIP_WORDS``), then the staged prompts' words are
    spliced into its token embedding from their own generator: every weight the binary prompts use stays what it
    was before those words existed, so binary results of the CLIP arms did not change with them.
    """
    base, tokenizer = build_tiny_clip_tokenizer(CLIP_WORDS), build_tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_config(base))
    _extend_vocabulary(model, base, tokenizer, seed)
    return model.eval(), tokenizer


def _extend_vocabulary(model: CLIPModel, base: PreTrainedTokenizerFast, tokenizer: PreTrainedTokenizerFast,
                       seed: int) -> None:
    """Give ``model`` (built for ``base``) the vocabulary of ``tokenizer``: known tokens keep their embedding
    rows, new ones get rows drawn like CLIP's initialisation (normal, std 0.02) from a generator of their own."""
    old = model.text_model.embeddings.token_embedding.weight.data
    rows = torch.empty(len(tokenizer), old.shape[1], dtype=old.dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    known = base.get_vocab()
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        rows[index] = old[known[token]] if token in known else torch.randn(old.shape[1], generator=generator) * 0.02
    model.text_model.embeddings.token_embedding = torch.nn.Embedding.from_pretrained(rows, freeze=False)
    text = model.config.text_config
    text.vocab_size = len(tokenizer)
    text.bos_token_id, text.eos_token_id, text.pad_token_id = (tokenizer.bos_token_id, tokenizer.eos_token_id,
                                                               tokenizer.pad_token_id)
    model.text_model.eos_token_id = tokenizer.eos_token_id


def save_tiny_clip(directory: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """Save the tiny CLIP model and tokenizer with ``save_pretrained`` (once) and return the folder."""
    target = Path(directory).expanduser() if directory else tiny_cache_dir() / f"clip-seed{seed}"

    def write(folder: Path) -> None:
        model, tokenizer = build_tiny_clip(seed)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return _save_once(target, "clip", write)


def tiny_clip_path(directory: str | None = None, seed: int = 0) -> str:
    """Folder of the tiny CLIP (created on first use); the ``tiny`` YAMLs pass it as the model path."""
    return str(save_tiny_clip(directory, seed))


def save_tiny_llama_tokenizer(directory: str | os.PathLike[str] | None = None) -> Path:
    """Save the tiny Llama-style tokenizer with ``save_pretrained`` (once) and return the folder."""
    target = Path(directory).expanduser() if directory else tiny_cache_dir() / "llama-tokenizer"
    return _save_once(target, "llama-tokenizer", lambda folder: build_tiny_llama_tokenizer().save_pretrained(folder))


def tiny_llama_tokenizer_path(directory: str | None = None) -> str:
    """Folder of the tiny Llama tokenizer (created on first use)."""
    return str(save_tiny_llama_tokenizer(directory))


def words_missing(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[str]:
    """Pieces of ``texts`` that ``tokenizer`` maps to its unknown token (to check prompts against a tiny vocabulary)."""
    missing = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        missing += [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])
                    if i == tokenizer.unk_token_id]
    return missing
