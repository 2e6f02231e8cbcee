"""The BLIP-2-style arm: frozen CLIP features -> Q-Former -> projection -> frozen Llama answering "No"/"Yes"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from pneumollm.models.arm_param_count import build_full_on_meta
from pneumollm.models.arms.answer_llm import build_causal_lm
from pneumollm.models.arms.blip2 import BLIP2, FrozenClipFeatures
from pneumollm.models.base import InputNormalizer
from pneumollm.models.components.pretrained import WeightsNotFoundError
from pneumollm.models.tiny import TINY_CLIP_VISION
from pneumollm.models.tiny_text import build_tiny_llama_tokenizer
from tests.helpers import build_model_config

ROOT = Path(__file__).resolve().parents[1]
TINY_VISION = {"pretrained": False, "architecture": "tiny", "feature_layer": -2, "frozen_dtype": "float32"}
TINY_LLM = {"pretrained": False, "architecture": "tiny", "frozen_dtype": "float32"}
TINY_QFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
# Full size (docs/arms.md): Q-Former with cross-attention from 1024-wide CLIP features, 32 x 768 queries,
# projection 768 -> 4096 and ln_vision.
FULL_TRAINABLE = 101_598_720 + 32 * 768 + (768 * 4096 + 4096) + 2 * 1024
FULL_FROZEN = 290_583_552 + 6_738_415_616  # CLIP ViT-L/14 vision tower without its last block + LLaMA-7B


pytestmark = pytest.mark.usefixtures("tiny_cache_one_thread")  # tests/conftest.py


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 1, 224, 224, generator=torch.Generator().manual_seed(1))


def tiny_yaml_model() -> BLIP2:
    return build_model_config("blip2")


def tiny(**kwargs) -> BLIP2:
    return BLIP2(vision=TINY_VISION, llm=TINY_LLM, tokenizer=build_tiny_llama_tokenizer(), qformer=TINY_QFORMER,
                 **kwargs)


def test_tiny_yaml_trains_only_the_qformer_queries_projection_and_ln_vision(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = tiny_yaml_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    intended = {n for n, _ in model.named_parameters()
                if n.split(".")[0] in {"qformer", "query_tokens", "projection", "ln_vision"}}
    assert trainable == intended and "query_tokens" in trainable
    assert model.query_tokens.shape == (1, 32, 32)
    with torch.no_grad():
        logits, features = model.eval()(images), model.extract_features(images)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all() and features.shape == (3, 64)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.train()
    F.binary_cross_entropy_with_logits(model(images), torch.eye(2)[[0, 1, 1]]).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable, (sorted(trainable - changed)[:5], sorted(changed - trainable)[:5])


def test_probability_is_the_softmax_over_the_answer_tokens_lm_head_logits(images: torch.Tensor) -> None:
    model = tiny().eval()
    tokenizer = model.answer_lm.tokenizer
    no, yes = tokenizer.convert_tokens_to_ids(["No", "Yes"])
    with torch.no_grad():
        queries = model.soft_prompt(images)
        ids = [tokenizer.bos_token_id] + tokenizer("Question: Does the patient have pneumoconiosis? Answer:",
                                                   add_special_tokens=False)["input_ids"]
        text = model.answer_lm.lm.get_input_embeddings()(torch.tensor(ids)).unsqueeze(0).expand(3, -1, -1)
        inputs_embeds = torch.cat([queries, text], dim=1)  # BLIP-2: the query outputs first, then "<s> Question..."
        full_logits = model.answer_lm.lm(inputs_embeds=inputs_embeds).logits[:, -1]
        logits = model(images)
    assert queries.shape == (3, 32, 64) and inputs_embeds.shape[1] == 32 + 1 + 10
    torch.testing.assert_close(model.answer_lm.sequence({"image": queries}), inputs_embeds)
    torch.testing.assert_close(logits, full_logits[:, [no, yes]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.softmax(-1)[:, 1], full_logits[:, [no, yes]].softmax(-1)[:, 1])


def test_image_features_are_the_second_to_last_blocks_tokens(images: torch.Tensor) -> None:
    encoder = FrozenClipFeatures(**TINY_VISION, init_seed=0)
    reference = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP_VISION)).eval()  # all 6 blocks, the encoder's weights
    missing, unexpected = reference.load_state_dict(encoder.model.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("encoder.layers.5.") for k in missing)
    with torch.no_grad():
        states = reference(pixel_values=InputNormalizer("clip")(images), output_hidden_states=True).hidden_states
        features = encoder(images)
    assert encoder.num_blocks == 5 and features.shape == (3, 1 + 64, 32)
    torch.testing.assert_close(features, states[-2])
    with pytest.raises(ValueError, match="feature_layer"):
        FrozenClipFeatures(**{**TINY_VISION, "feature_layer": 7})


def test_queries_read_the_image_through_cross_attention(images: torch.Tensor) -> None:
    model = tiny().eval()
    with torch.no_grad():
        first, second = model.query_outputs(images[:1]), model.query_outputs(images[1:2])
        assert not torch.allclose(first, second)
        for layer in model.qformer.encoder.layer:
            if layer.has_cross_attention:
                layer.crossattention.output.dense.weight.zero_()
                layer.crossattention.output.dense.bias.zero_()
        torch.testing.assert_close(model.query_outputs(images[:1]), model.query_outputs(images[1:2]))


def test_save_pretrained_then_load_gives_identical_outputs(tmp_path: Path, images: torch.Tensor) -> None:
    """Real weights go through load_pretrained: tiny random models saved with save_pretrained, loaded back."""
    clip_dir, llm_dir = tmp_path / "clip", tmp_path / "llama"
    FrozenClipFeatures(**{**TINY_VISION, "feature_layer": -1}).model.save_pretrained(clip_dir)  # whole tower
    build_causal_lm(name_or_path=None, **TINY_LLM).save_pretrained(llm_dir)
    build_tiny_llama_tokenizer().save_pretrained(llm_dir)
    torch.manual_seed(0)
    random = tiny()
    loaded = BLIP2(vision={"name_or_path": str(clip_dir), "frozen_dtype": "float32"},
                   llm={"name_or_path": str(llm_dir), "frozen_dtype": "float32"}, qformer=TINY_QFORMER)
    assert loaded.encoder.num_blocks == 5
    params = dict(random.named_parameters())
    incompatible = loaded.load_state_dict({n: v for n, v in random.state_dict().items()
                                           if n in params and params[n].requires_grad}, strict=False)
    assert not incompatible.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), random.eval()(images), rtol=0, atol=0)


def test_missing_weights_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        BLIP2(vision={"name_or_path": str(tmp_path / "no-such-clip")}, llm=TINY_LLM,
              tokenizer=build_tiny_llama_tokenizer(), qformer=TINY_QFORMER)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        BLIP2(vision=TINY_VISION, llm={"name_or_path": str(tmp_path / "no-such-llama")}, qformer=TINY_QFORMER)
    with pytest.raises(WeightsNotFoundError, match="Download the weights"):
        BLIP2(vision={"name_or_path": "openai/clip-vit-large-patch14-not-cached"}, llm=TINY_LLM,
              tokenizer=build_tiny_llama_tokenizer())


def test_qformer_cross_attention_width_follows_the_encoder() -> None:
    with pytest.raises(ValueError, match="encoder_hidden_size"):
        BLIP2(vision=TINY_VISION, llm=TINY_LLM, tokenizer=build_tiny_llama_tokenizer(),
              qformer={**TINY_QFORMER, "encoder_hidden_size": 1408})
    model = tiny(num_query_tokens=4)
    assert model.qformer.config.encoder_hidden_size == model.encoder.width == 32
    assert model.soft_prompt(torch.rand(1, 1, 224, 224)).shape == (1, 4, 64)


def test_full_size_counts_on_the_meta_device() -> None:
    model = build_full_on_meta("blip2")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.trainable_parameter_count() == FULL_TRAINABLE == 104_775_168
    assert model.total_parameter_count() == FULL_FROZEN + FULL_TRAINABLE
    assert sum(p.numel() for p in model.qformer.parameters()) == 101_598_720
    assert model.encoder.num_blocks == 23 and model.query_tokens.shape == (1, 32, 768)
    assert (model.projection.in_features, model.projection.out_features) == (768, 4096)
    docs = (ROOT / "docs" / "arms.md").read_text()
    assert "104,775,168" in docs and "107,130,880" in docs
