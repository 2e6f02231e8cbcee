"""The LaVIN-style arm: CLIP CLS tokens -> neck -> frozen Llama answering "No"/"Yes"; what it outputs and trains."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pneumollm.models.arm_param_count import build_full_on_meta
from pneumollm.models.arms.answer_llm import FrozenAnswerLM, answer_token_ids, build_causal_lm
from pneumollm.models.arms.lavin import LaVIN, RoutedRepAdapter
from pneumollm.models.components.encoders import ClipVisionEncoder
from pneumollm.models.components.pretrained import WeightsNotFoundError
from pneumollm.models.tiny_text import build_tiny_llama_tokenizer
from tests.helpers import build_model_config

ROOT = Path(__file__).resolve().parents[1]
TINY_VISION = {"pretrained": False, "architecture": "tiny", "multiscale": 1, "frozen_dtype": "float32"}
TINY_LLM = {"pretrained": False, "architecture": "tiny", "frozen_dtype": "float32"}
# Full size (docs/arms.md): router adapters in CLIP (24 x 20,490) and LLaMA-7B (32 x 81,930) + neck 659,584.
FULL_TRAINABLE = 24 * 20_490 + 32 * 81_930 + 659_584
FULL_FROZEN = 303_179_776 + 6_738_415_616  # CLIP ViT-L/14 vision tower + LLaMA-7B with its LM head


pytestmark = pytest.mark.usefixtures("tiny_cache_one_thread")  # tests/conftest.py


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 1, 224, 224, generator=torch.Generator().manual_seed(1))


def tiny_yaml_model() -> LaVIN:
    return build_model_config("lavin")


def tiny(**kwargs) -> LaVIN:
    return LaVIN(vision=TINY_VISION, llm=TINY_LLM, tokenizer=build_tiny_llama_tokenizer(), **kwargs)


def randomise_adapters(model: torch.nn.Module) -> None:
    """Give the zero-initialised up-projections values, so the adapters change the function."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and ".experts." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def adamw_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The trainer's default recipe: BCE on the two logits against one-hot targets, AdamW on trainables only."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.train()
    F.binary_cross_entropy_with_logits(model(images), F.one_hot(labels, 2).float()).backward()
    optimizer.step()


def test_tiny_yaml_trains_only_adapters_and_neck(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = tiny_yaml_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n or n.startswith("neck.") for n in trainable)
    assert {n for n in trainable if n.startswith("neck.")} == {f"neck.layers.{i}.{k}" for i in (0, 2)
                                                             for k in ("weight", "bias")}
    clip_blocks, llm_layers = 6, 2
    assert sum(n.endswith("adapter.router.weight") for n in trainable) == clip_blocks + llm_layers
    with torch.no_grad():
        logits, features = model.eval()(images), model.extract_features(images)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all() and features.shape == (3, 64)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    labels = torch.tensor([0, 1, 1])
    adamw_step(model, images, labels)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    # the zero-initialised up-projections of every adapter (vision and LLM) and the neck move at once
    assert {n for n in trainable if ".experts." in n or n.startswith("neck.")} <= changed
    adamw_step(model, images, labels)  # then the down-projections, which only get gradients once U != 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {n for n in trainable if ".adapter.down." in n} <= changed <= trainable


def test_probability_is_the_softmax_over_the_answer_tokens_lm_head_logits(images: torch.Tensor) -> None:
    model = tiny()
    randomise_adapters(model)
    model.eval()
    tokenizer = model.answer_lm.tokenizer
    no, yes = tokenizer.convert_tokens_to_ids(["No", "Yes"])
    with torch.no_grad():
        image_tokens = model.image_tokens(images)
        embed = model.answer_lm.lm.get_input_embeddings()

        def text(t: str, bos: bool = False) -> torch.Tensor:
            ids = ([tokenizer.bos_token_id] if bos else []) + tokenizer(t, add_special_tokens=False)["input_ids"]
            return embed(torch.tensor(ids)).unsqueeze(0).expand(3, -1, -1)

        # "<s> Image: [6 image tokens] Question: Does the patient have pneumoconiosis? Answer:"
        inputs_embeds = torch.cat([text("Image:", bos=True), image_tokens,
                                   text("Question: Does the patient have pneumoconiosis?\nAnswer:")], dim=1)
        full_logits = model.answer_lm.lm(inputs_embeds=inputs_embeds).logits[:, -1]  # LlamaForCausalLM, all vocab
        logits = model(images)
    assert inputs_embeds.shape[1] == 1 + 2 + 6 + 10
    torch.testing.assert_close(model.answer_lm.sequence({"image": image_tokens}), inputs_embeds)
    torch.testing.assert_close(logits, full_logits[:, [no, yes]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.softmax(-1)[:, 1], full_logits[:, [no, yes]].softmax(-1)[:, 1])
    # the adapters are part of the LM's function: without them the answer changes
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("answer_lm.") and ".experts." in name:
                param.zero_()
        assert not torch.allclose(model(images), logits)


def test_images_change_the_answer_only_through_the_image_tokens(images: torch.Tensor) -> None:
    model = tiny().eval()
    with torch.no_grad():
        first, second = model(images[:1]), model(images[1:2])
        assert not torch.allclose(first, second)
        seq = model.answer_lm.sequence({"image": model.image_tokens(images[:2])})
        text_positions = [i for i in range(seq.shape[1]) if not 3 <= i < 9]
        torch.testing.assert_close(seq[0, text_positions], seq[1, text_positions])


def test_modality_token_comes_first_and_trains() -> None:
    model = tiny(modality_token=True)
    assert model.modality_token.requires_grad and model.modality_token.shape == (1, 1, 64)
    tokens = torch.zeros(2, 6, 64)
    seq = model.answer_lm.sequence({"image": tokens}, prefix=model.modality_token)
    assert seq.shape[1] == 1 + tiny().answer_lm.sequence({"image": tokens}).shape[1]
    torch.testing.assert_close(seq[:, 0], model.modality_token[0].expand(2, -1).detach())


def test_plain_repadapter_and_no_adapter_variants() -> None:
    plain, none, router = tiny(adapter={"kind": "repadapter"}), tiny(adapter={"kind": "none"}), tiny()
    neck = sum(p.numel() for p in router.neck.parameters())
    assert none.trainable_parameter_count() == neck
    vision = 6 * (32 * 8 + 8 + 4 * 32 + 32)  # RepAdapter: dense down dim->8, grouped up 8->dim (2 groups)
    llm = 2 * (64 * 8 + 8 + 4 * 64 + 64)
    assert plain.trainable_parameter_count() == neck + vision + llm
    routing = 6 * (4 * 32 + 32 + 32 * 2 + 2) + 2 * (4 * 64 + 64 + 64 * 2 + 2)  # second expert + router
    assert router.trainable_parameter_count() == neck + vision + llm + routing


def test_routed_adapter_is_the_identity_at_start_and_routes_on_the_first_token() -> None:
    adapter = RoutedRepAdapter(16, hidden=4, groups=2, temperature=10.0).eval()
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(adapter(x), x)
    with torch.no_grad():
        for expert in adapter.experts:
            expert.weight.normal_()
    weights = adapter.routing_weights(x)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    changed_rest = x.clone()
    changed_rest[:, 1:] += 1.0
    torch.testing.assert_close(adapter.routing_weights(changed_rest), weights)
    hidden = adapter.down(x)
    expected = x + sum(weights[:, k, None, None] * e(hidden) for k, e in enumerate(adapter.experts))
    torch.testing.assert_close(adapter(x), expected)


def test_save_pretrained_then_load_gives_identical_outputs(tmp_path: Path, images: torch.Tensor) -> None:
    """Real weights go through load_pretrained: tiny random models saved with save_pretrained, loaded back."""
    clip_dir, llm_dir = tmp_path / "clip", tmp_path / "llama"
    ClipVisionEncoder(**TINY_VISION, adapter={"kind": "none"}).model.save_pretrained(clip_dir)
    build_causal_lm(name_or_path=None, **TINY_LLM).save_pretrained(llm_dir)
    build_tiny_llama_tokenizer().save_pretrained(llm_dir)  # the tokenizer beside the weights, as in a hub folder
    random = tiny()
    loaded = LaVIN(vision={"name_or_path": str(clip_dir), "multiscale": 1, "frozen_dtype": "float32"},
                   llm={"name_or_path": str(llm_dir), "frozen_dtype": "float32"})
    trainable = {n: p for n, p in random.state_dict().items() if dict(random.named_parameters())[n].requires_grad}
    incompatible = loaded.load_state_dict(trainable, strict=False)
    assert not incompatible.unexpected_keys
    randomise_adapters(random)
    randomise_adapters(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), random.eval()(images), rtol=0, atol=0)
    assert loaded.answer_lm.answer_ids == random.answer_lm.answer_ids


def test_missing_weights_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        LaVIN(vision=TINY_VISION, llm={"name_or_path": str(tmp_path / "no-such-llama")})
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        LaVIN(vision={"name_or_path": str(tmp_path / "no-such-clip")}, llm=TINY_LLM,
              tokenizer=build_tiny_llama_tokenizer())
    with pytest.raises(WeightsNotFoundError, match="Download the weights"):
        LaVIN(vision=TINY_VISION, llm={"name_or_path": "huggyllama/llama-7b-not-cached"})


def test_random_llm_needs_a_tokenizer() -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        LaVIN(vision=TINY_VISION, llm=TINY_LLM)


def test_answer_tokens_follow_the_prompt_and_bad_answers_are_named(caplog: pytest.LogCaptureFixture) -> None:
    tokenizer = build_tiny_llama_tokenizer()
    assert answer_token_ids(tokenizer, "Answer:", ["No", "Yes"]) == tokenizer.convert_tokens_to_ids(["No", "Yes"])
    with caplog.at_level(logging.WARNING):
        ids = answer_token_ids(tokenizer, "Answer:", ["No", "Yes chest"])
    assert ids[1] == tokenizer.convert_tokens_to_ids("Yes") and "first sub-token" in caplog.text
    with pytest.raises(ValueError, match="share their first token"):
        answer_token_ids(tokenizer, "Answer:", ["Yes", "Yes ."])
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        answer_token_ids(tokenizer, "Answer:", ["No", "Perhaps"])


def test_template_must_hold_the_image_slot() -> None:
    lm = build_causal_lm(name_or_path=None, **TINY_LLM)
    with pytest.raises(ValueError, match="image"):
        FrozenAnswerLM(lm, build_tiny_llama_tokenizer(), "{bos}Question: Does the patient have pneumoconiosis?")
    with pytest.raises(ValueError, match="unknown LaVIN adapter kind"):
        tiny(adapter={"kind": "lora"})


def test_sentencepiece_style_answers_keep_their_word_start_marker() -> None:
    """With a Llama-like tokenizer "Yes" after "Answer:" is the word-start token, as the LM would emit it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "▁Answer": 2, ":": 3, "▁Yes": 4, "▁No": 5, "Yes": 6, "No": 7}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", continuing_subword_prefix=""))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>")
    assert answer_token_ids(tokenizer, "Answer:", ["No", "Yes"]) == [5, 4]


def test_full_size_counts_on_the_meta_device() -> None:
    model = build_full_on_meta("lavin")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.trainable_parameter_count() == FULL_TRAINABLE == 3_773_104
    assert model.total_parameter_count() == FULL_FROZEN + FULL_TRAINABLE
    assert model.encoder.num_tokens == 6 and model.neck.layers[2].out_features == 4096
    variant = build_full_on_meta("lavin", adapter={"kind": "repadapter"}, modality_token=True)
    assert variant.trainable_parameter_count() == 24 * 13_320 + 32 * 53_256 + 659_584 + 4_096 == 2_687_552
    docs = (ROOT / "docs" / "arms.md").read_text()
    assert "3,773,104" in docs and "2,683,456" in docs
