"""Parameter accounting on the meta device: the paper's 2,704,000 trainable parameters, exactly."""

from __future__ import annotations

import pytest

from pneumollm.models.param_count import (
    PAPER_CHOICES,
    PAPER_TRAINABLE,
    TABLE_ROWS,
    build_model,
    compose_model_config,
    full_size_counts,
    main,
    offline_architecture_overrides,
)

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
    with_engine, _ = full_size_counts({"encoder": "clip_vit_l14", "llm": "none"})
    without_engine, _ = full_size_counts({"encoder": "clip_vit_l14", "llm": "none", "token_engine": "none"})
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
