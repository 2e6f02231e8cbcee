"""A frozen Llama-family causal LM that answers a yes/no question about visual tokens (LaVIN and BLIP-2 arms).

The prompt is a template such as ``"{bos}Image: {image}\\nQuestion: ...\\nAnswer:"``: literal text is
tokenised (each piece on its own, without special tokens), ``{bos}`` is the tokenizer's start token and every
other field is a slot filled with embeddings at run time (``{image}``: the visual tokens). The LM's
next-token logits at the last position are read for the answer words only, so a film gets two logits
``[logit("No"), logit("Yes")]``: softmax over them is P(pneumoconiosis). No text is generated.
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from pneumollm.models.components.adapters import AdapterSite, attention_sites
from pneumollm.models.components.llm import CAUSAL_LM_TYPES, LLAMA_ARCHITECTURES
from pneumollm.models.components.pretrained import CheckpointRules, load_or_build, load_pretrained
from pneumollm.models.task_texts import PAPER_ANSWERS, PAPER_QUESTION  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

ANSWERS = PAPER_ANSWERS  # index 1 = "Yes" = pneumoconiosis
BOS_FIELD = "bos"

TokenizerSource = str | os.PathLike[str] | PreTrainedTokenizerBase


def build_causal_lm(
    name_or_path: str | os.PathLike[str] | None = "huggyllama/llama-7b",
    pretrained: bool = True,
    architecture: str = "llama7b",
    config_overrides: Mapping[str, Any] | None = None,
    frozen_dtype: str | torch.dtype = "auto",
    attn_implementation: str = "sdpa",
    init_seed: int | None = 0,
) -> LlamaForCausalLM:
    """A frozen causal LM with its token embeddings and LM head.

    ``pretrained: true`` loads ``name_or_path`` (hub id or local folder of any Llama-family causal LM) through
    ``load_pretrained``; ``pretrained: false`` builds ``architecture`` (``llama7b`` or ``tiny``) randomly
    initialised from ``init_seed``, changed by ``config_overrides``.
    """
    model = load_or_build(LlamaForCausalLM, LlamaConfig, LLAMA_ARCHITECTURES, pretrained=pretrained,
                          name_or_path=name_or_path, architecture=architecture, config_overrides=config_overrides,
                          frozen_dtype=frozen_dtype, attn_implementation=attn_implementation, init_seed=init_seed,
                          loader=AutoModelForCausalLM,
                          rules=CheckpointRules(model_types=CAUSAL_LM_TYPES, what="causal LLM")).model
    _check_causal_lm(model, str(name_or_path if pretrained else architecture))
    return model


def load_tokenizer(source: TokenizerSource) -> PreTrainedTokenizerBase:
    """A tokenizer object as is, or one loaded from a hub id / local folder through ``load_pretrained``."""
    if isinstance(source, PreTrainedTokenizerBase):
        return source
    return load_pretrained(AutoTokenizer, source)


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, context: str, answers: Sequence[str],
                     separator: str = " ") -> list[int]:
    """The id of the first token of each answer as it would follow ``context`` (the prompt's last text).

    ``context + separator + answer`` is tokenised and the first token after ``context``'s own tokens is
    taken, so word-start markers (SentencePiece's "▁Yes", BPE's " Yes") come out as the LM would emit them.
    Where the context's tokens change when the answer follows, the answer is tokenised alone. An answer of
    several tokens is scored by its first sub-token (logged); answers must differ in that token.
    """
    base = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    ids = []
    for answer in answers:
        full = tokenizer(context + separator + answer if context else answer, add_special_tokens=False)["input_ids"]
        pieces = full[len(base):] if full[:len(base)] == base else []
        if not pieces:
            pieces = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not pieces:
            raise ValueError(f"the answer {answer!r} gives no tokens with tokenizer {type(tokenizer).__name__}")
        if tokenizer.unk_token_id is not None and pieces[0] == tokenizer.unk_token_id:
            raise ValueError(f"the answer {answer!r} is not in the tokenizer's vocabulary "
                             "(it maps to the unknown token)")
        if len(pieces) > 1:
            log.warning("answer %r is %d tokens (%s); scoring its first sub-token", answer, len(pieces),
                        tokenizer.convert_ids_to_tokens(pieces))
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"answers {list(answers)} share their first token {tokenizer.convert_ids_to_tokens(ids)}; "
                         "choose answers that differ in their first token")
    return ids


@dataclass(frozen=True)
class TemplatePiece:
    """One piece of a prompt template: literal ``text``, or a ``field`` (``bos`` or an embedding slot)."""

    text: str = ""
    field: str | None = None


def parse_template(template: str) -> list[TemplatePiece]:
    """Split ``template`` into literal text and ``{field}`` pieces (``str.format`` syntax, ``{{`` escapes)."""
    pieces = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if literal:
            pieces.append(TemplatePiece(text=literal))
        if field is not None:
            if not field.isidentifier() or spec or conversion:
                raise ValueError(f"template field {{{field}}} in {template!r} must be a bare name such as {{image}}")
            pieces.append(TemplatePiece(field=field))
    return pieces


class FrozenAnswerLM(nn.Module):
    """A frozen causal LM, a prompt template with embedding slots, and the token ids of the answers.

    ``forward(slots)`` fills the template's slots (each [B, n, hidden] or [1, n, hidden]) and returns
    ``(logits [B, len(answers)], features [B, hidden])``: the LM head's logits of the answer tokens at the
    last position, and the final-normed hidden state there (the LM head's input). Attention is the LM's own
    causal attention over the whole sequence; positions run 0..T-1 with ``prefix`` (if given) first.
    Text pieces are stripped of surrounding whitespace and tokenised one by one without special tokens.
    """

    def __init__(
        self,
        lm: LlamaForCausalLM,
        tokenizer: PreTrainedTokenizerBase,
        template: str,
        slots: Sequence[str] = ("image",),
        answers: Sequence[str] = ANSWERS,
        answer_separator: str = " ",
    ) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.template = template
        self.answers = tuple(answers)
        self.pieces = parse_template(template)
        fields = [p.field for p in self.pieces if p.field is not None and p.field != BOS_FIELD]
        if sorted(fields) != sorted(slots):
            raise ValueError(f"template {template!r} must hold each of the slots {sorted(slots)} exactly once "
                             f"(plus optional {{{BOS_FIELD}}}); it holds {sorted(fields)}")
        self.slots = tuple(slots)
        texts = [p.text.strip() for p in self.pieces if p.field is None]
        context = texts[-1] if self.pieces and self.pieces[-1].field is None else ""
        self.answer_ids = answer_token_ids(tokenizer, context, self.answers, answer_separator)
        self._segments: list[str | None] = []  # buffer name of a text segment, or None for a slot
        self._slot_order: list[str] = []
        used = list(self.answer_ids)
        for i, piece in enumerate(self.pieces):
            if piece.field is not None and piece.field != BOS_FIELD:
                self._segments.append(None)
                self._slot_order.append(piece.field)
                continue
            ids = self._piece_ids(piece)
            if not ids:
                continue
            name = f"prompt_ids_{i}"
            self.register_buffer(name, torch.tensor(ids, dtype=torch.long), persistent=False)
            self._segments.append(name)
            used += ids
        self.register_buffer("answer_token_ids", torch.tensor(self.answer_ids, dtype=torch.long), persistent=False)
        vocab = lm.get_input_embeddings().num_embeddings
        if max(used) >= vocab:
            raise ValueError(f"the tokenizer gives token id {max(used)} but the LLM's vocabulary has {vocab} entries; "
                             "use the tokenizer that belongs to the LLM")

    def _piece_ids(self, piece: TemplatePiece) -> list[int]:
        if piece.field == BOS_FIELD:
            if self.tokenizer.bos_token_id is None:
                raise ValueError(f"the template asks for {{{BOS_FIELD}}} but the tokenizer has no start token")
            return [self.tokenizer.bos_token_id]
        text = piece.text.strip()
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    @property
    def hidden_size(self) -> int:
        return self.lm.config.hidden_size

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The dtype of the LM's weights (what every input embedding is cast to)."""
        return self.lm.get_input_embeddings().weight.dtype

    def attention_sites(self) -> Iterator[AdapterSite]:
        """The normalised input of every decoder layer's self-attention, feeding q, k and v (adapter sites)."""
        return attention_sites(self.lm.get_decoder().layers, "input_layernorm")

    def sequence(self, slots: Mapping[str, torch.Tensor], prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The LM's ``inputs_embeds`` [B, T, hidden] in the frozen dtype: prefix, then the filled template."""
        missing = sorted(set(self.slots) - set(slots))
        if missing:
            raise ValueError(f"missing embeddings for the template slots {missing}")
        batch = max(t.shape[0] for t in [*slots.values(), *([prefix] if prefix is not None else [])])
        embed = self.lm.get_input_embeddings()
        parts = [] if prefix is None else [prefix.to(self.frozen_dtype).expand(batch, -1, -1)]
        slot_iter = iter(self._slot_order)
        for name in self._segments:
            if name is None:
                parts.append(slots[next(slot_iter)].to(self.frozen_dtype).expand(batch, -1, -1))
            else:
                parts.append(embed(getattr(self, name)).unsqueeze(0).expand(batch, -1, -1))
        return torch.cat(parts, dim=1)

    def last_hidden(self, slots: Mapping[str, torch.Tensor],
                    prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The final-normed hidden state at the last position [B, hidden] (the LM head's input), frozen dtype."""
        inputs_embeds = self.sequence(slots, prefix)
        return self.lm.get_decoder()(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state[:, -1]

    def answer_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head's logits of the answer tokens [B, len(answers)], float32, from ``last_hidden``."""
        head = self.lm.get_output_embeddings()
        weight = head.weight[self.answer_token_ids]
        bias = None if getattr(head, "bias", None) is None else head.bias[self.answer_token_ids]
        return F.linear(hidden, weight, bias).float()

    def forward(self, slots: Mapping[str, torch.Tensor],
                prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.last_hidden(slots, prefix)
        return self.answer_logits(hidden), hidden.float()


def _check_causal_lm(model: nn.Module, source: str) -> None:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    ok = (layers is not None and len(layers) > 0 and model.get_output_embeddings() is not None
          and all(hasattr(layer, "input_layernorm") and hasattr(layer, "self_attn") for layer in layers))
    if not ok:
        raise ValueError(f"{source!r} loaded as {type(model).__name__}, which is not a Llama-family causal LM "
                         "(expected an LM head and decoder layers with .input_layernorm and .self_attn)")


def build_answer_lm(llm_kwargs: dict[str, Any], tokenizer: Any, template: str,
                    answers: Sequence[str]) -> FrozenAnswerLM:
    """The frozen causal LM (``build_causal_lm(**llm_kwargs)``) with its tokenizer, scoring ``answers``.

    ``tokenizer`` defaults to the LLM's own folder or hub id; a randomly built LLM needs one given explicitly.
    """
    lm = build_causal_lm(**llm_kwargs)
    if tokenizer is None:
        tokenizer = llm_kwargs.get("name_or_path") if llm_kwargs.get("pretrained", True) else None
        if tokenizer is None:
            raise ValueError("a randomly built LLM needs an explicit `tokenizer` (id, folder or object)")
    return FrozenAnswerLM(lm, load_tokenizer(tokenizer), template, slots=("image",), answers=answers)
