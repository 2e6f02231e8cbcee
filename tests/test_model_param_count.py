"""Parameter accounting on the meta device: the paper's 2,704,000 trainable parameters, exactly."""

from __future__ import annotations

import pytest

from pneumollm.cli.param_count import main
from pneumollm.models.param_count import (
    PAPER_CHOICES,
    PAPER_TRAINABLE,
    TABLE_ROWS,
    build_model,
    compose_model_config,
    full_size_counts,
    full_size_model,
    offline_architecture_overrides,
    weight_bytes,
)
from tests.helpers import markdown_rows

LLAMA_7B_WITHOUT_EMBEDDINGS_AND_LM_HEAD = 6_476_271_616
CLIP_VIT_L14_VISION_TOWER = 303_179_776


def test_paper_configuration_has_exactly_the_papers_trainable_parameters() -> None:
    counts, parts = full_size_counts(PAPER_CHOICES)
    assert counts.trainable == PAPER_TRAINABLE == 2_704_000
    assert parts == {"encoder": 24 * 13_320, "token_engine": 12_352, "neck": 659_584, "llm": 32 * 53_256,
                     "head": 8_192}
    assert counts.total == LLAMA_7B_WITHOUT_EMBEDDINGS_AND_LM_HEAD + CLIP_VIT_L14_VISION_TOWER + PAPER_TRAINABLE
    assert counts.excluded == 32_000 * 4096  # the unused token embedding, reported rather than hidden


def test_simplified_pneumollm_matches_table_5s_269m() -> None:
    counts, _ = full_size_counts({**PAPER_CHOICES, "token_engine": "none", "emitter": "full"})
    assert counts.trainable == PAPER_TRAINABLE - 12_352 == 2_691_648  # "2.69M": no CMTE, no emitter


def test_meta_build_allocates_nothing() -> None:
    cfg = compose_model_config(PAPER_CHOICES)
    model = build_model(compose_model_config(PAPER_CHOICES, offline_architecture_overrides(cfg)), device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.llm.hidden_size == 4096 and model.encoder.num_tokens == 6


def test_without_llm_matches_the_papers_052m_only_without_the_engine() -> None:
    with_engine, _ = full_size_counts({"encoder": "full_clip_vit_l14", "llm": "none"})
    without_engine, _ = full_size_counts({"encoder": "full_clip_vit_l14", "llm": "none", "token_engine": "none"})
    assert without_engine.trainable == 319_680 + 131_200 + (128 * 512 + 512) + 2 * 512 == 517_952
    assert with_engine.trainable == without_engine.trainable + 12_352


@pytest.mark.parametrize(("label", "choices", "overrides"), TABLE_ROWS, ids=[r[0][:40] for r in TABLE_ROWS])
def test_every_table_row_builds_full_size_on_meta(label: str, choices: dict, overrides: tuple) -> None:
    counts, parts = full_size_counts(choices, overrides)
    assert 0 < counts.trainable <= counts.total
    assert sum(parts.values()) == counts.trainable


def test_cli_prints_the_breakdown(capsys: pytest.CaptureFixture[str]) -> None:
    main(["token_engine.m=8"])
    out = capsys.readouterr().out
    assert f"{PAPER_TRAINABLE + 4 * 12 + 4:,}" in out  # 4 more outputs of the CMTE's 12 -> m layer


@pytest.fixture(scope="module")
def paper_model():
    return full_size_model(PAPER_CHOICES)


def test_byte_counts_follow_the_element_size(paper_model) -> None:
    frozen = sum(p.numel() for p in paper_model.parameters() if not p.requires_grad)
    assert frozen == LLAMA_7B_WITHOUT_EMBEDDINGS_AND_LM_HEAD + CLIP_VIT_L14_VISION_TOWER
    fp32, bf16 = weight_bytes(paper_model, "fp32"), weight_bytes(paper_model, "bf16/fp16")
    assert bf16.frozen == 2 * frozen and fp32.frozen == 4 * frozen
    assert bf16.trainable == fp32.trainable == 4 * PAPER_TRAINABLE  # trainable parts stay fp32
    assert bf16.frozen / 1e9 == pytest.approx(13.56, abs=0.01)  # the "13.6 GB" of frozen weights
    assert not bf16.fits(8) and bf16.fits(16) and not fp32.fits(24)


def test_quantised_trunk_bytes(paper_model) -> None:
    bf16 = weight_bytes(paper_model, "bf16/fp16")
    int8, nf4, nf4_dq = (weight_bytes(paper_model, o) for o in ("int8 trunk", "nf4 trunk", "nf4+dq trunk"))
    linear = 4 * 4096 * 4096 + 3 * 4096 * 11008  # q, k, v, o and gate, up, down of one decoder layer
    norms = 32 * 2 * 4096 + 4096
    assert 32 * linear + norms == LLAMA_7B_WITHOUT_EMBEDDINGS_AND_LM_HEAD
    rows = 32 * (4 * 4096 + 2 * 11008 + 4096)
    assert int8.llm == 32 * linear + 4 * rows + 2 * norms  # one byte per weight + a float32 scale per row
    blocks = [n // 64 for n in (4096 * 4096, 4096 * 11008)]
    assert nf4.llm == 32 * (4 * (4096 * 4096 // 2 + 4 * blocks[0] + 64)
                            + 3 * (4096 * 11008 // 2 + 4 * blocks[1] + 64)) + 2 * norms
    assert nf4_dq.llm < nf4.llm < int8.llm < bf16.llm
    assert int8.encoder == nf4.encoder == bf16.encoder  # the vision tower is never quantised
    assert nf4.total < 6e9 and nf4_dq.total < nf4.total and nf4.fits(8)


def test_cli_prints_the_byte_table(capsys: pytest.CaptureFixture[str]) -> None:
    main(["llm.quantization=nf4"])
    out = capsys.readouterr().out
    rows = markdown_rows(out)
    assert ["bf16/fp16", "0.61", "12.95"] in [r[:3] for r in rows] and "nf4 trunk" in [r[0] for r in rows]
    assert "24 GB card" in rows[0]
