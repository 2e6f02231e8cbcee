"""The CLIP arms of Table 3 on a tiny random CLIP: what their logits are, and what trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from pneumollm.models.arms.clip_arms import CoCoOpCLIP, CoOpCLIP, LinearProbeCLIP, ZeroShotCLIP
from pneumollm.models.arms.clip_backbone import PAPER_PROMPTS, FrozenCLIP
from pneumollm.models.base import InputNormalizer
from pneumollm.models.components.pretrained import WeightsNotFoundError, load_pretrained
from pneumollm.models.tiny_text import save_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip"))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 1, 224, 224, generator=torch.Generator().manual_seed(1))


def _independent_clip_scores(path: str, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """logit_scale x cosine, computed straight from CLIPModel's own feature functions."""
    from transformers import AutoTokenizer

    model = CLIPModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(prompts, padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        image = model.get_image_features(pixel_values=InputNormalizer("clip")(images)).pooler_output
        text = model.get_text_features(input_ids=ids).pooler_output
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * image @ text.t()


def test_zero_shot_logits_are_scaled_cosines_of_the_two_paper_prompts(tiny_clip: str, images: torch.Tensor) -> None:
    model = ZeroShotCLIP(tiny_clip).eval()
    assert model.prompts == ("Normal chest radiograph", "Pneumoconiosis chest radiograph")
    assert model.trainable_parameter_count() == 0
    with torch.no_grad():
        logits = model(images)
    expected = _independent_clip_scores(tiny_clip, images, list(PAPER_PROMPTS))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # index 1 is pneumoconiosis: swapping the prompts swaps the columns
    swapped = ZeroShotCLIP(tiny_clip, prompts=PAPER_PROMPTS[::-1]).eval()
    with torch.no_grad():
        torch.testing.assert_close(swapped(images), logits.flip(1), rtol=1e-5, atol=1e-5)


def test_linear_probe_is_a_logistic_regression_on_clip_image_embeddings(tiny_clip: str, images: torch.Tensor) -> None:
    model = LinearProbeCLIP(tiny_clip).eval()
    dim = model.clip.embed_dim
    assert model.trainable_parameter_count() == dim + 1
    with torch.no_grad():
        model.probe.weight.normal_()
        model.probe.bias.fill_(0.3)
        logits = model(images)
        embeds = model.clip.encode_image(images)
    z = embeds @ model.probe.weight.t() + 0.3
    assert torch.equal(logits[:, 0], torch.zeros(3))
    torch.testing.assert_close(logits.softmax(-1)[:, 1:], torch.sigmoid(z), rtol=1e-5, atol=1e-6)


def test_text_path_from_embeddings_reproduces_clip_text_features(tiny_clip: str) -> None:
    """CoOp initialised from real words must give exactly CLIP's features of the written prompt."""
    model = CoOpCLIP(tiny_clip, n_ctx=4, ctx_init="a photo of a").eval()
    with torch.no_grad():
        ours = model.text_features()
        written = [f"a photo of a {name}." for name in PAPER_PROMPTS]
        reference = model.clip.encode_text(model.clip.tokenize(written))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_coop_trains_only_its_context_vectors(tiny_clip: str, images: torch.Tensor) -> None:
    model = CoOpCLIP(tiny_clip, n_ctx=4)
    width = model.clip.text_width
    trainable = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner.ctx": torch.Size([4, width])}
    loss = F.binary_cross_entropy_with_logits(model(images), F.one_hot(torch.tensor([0, 1, 1]), 2).float())
    loss.backward()
    assert model.prompt_learner.ctx.grad is not None and model.prompt_learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip.parameters())


def test_cocoop_meta_net_shifts_the_context_per_image(tiny_clip: str, images: torch.Tensor) -> None:
    model = CoCoOpCLIP(tiny_clip, n_ctx=4, ctx_init="a photo of a", meta_net_reduction=4).eval()
    dim, width = model.clip.embed_dim, model.clip.text_width
    hidden = dim // 4
    assert model.trainable_parameter_count() == 4 * width + (dim * hidden + hidden) + (hidden * width + width)
    with torch.no_grad():
        image = model.extract_features(images)
        per_image = model.text_features(image)
        assert per_image.shape == (3, 2, dim)
        assert not torch.allclose(per_image[0], per_image[1])
        # with the meta-net silenced, CoCoOp is CoOp with the same context
        last = model.prompt_learner.meta_net[-1]
        last.weight.zero_()
        last.bias.zero_()
        silenced = model.text_features(image)
        coop = CoOpCLIP(tiny_clip, n_ctx=4, ctx_init="a photo of a").eval()
        shared = coop.text_features()
    torch.testing.assert_close(silenced, shared.expand(3, -1, -1), rtol=1e-5, atol=1e-5)


def test_ctx_init_must_match_n_ctx(tiny_clip: str) -> None:
    with pytest.raises(ValueError, match="n_ctx"):
        CoOpCLIP(tiny_clip, n_ctx=2, ctx_init="a photo of a")


def test_missing_weights_folder_gives_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "no-such-clip"
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        ZeroShotCLIP(str(missing))
    with pytest.raises(WeightsNotFoundError, match="Download the weights"):
        FrozenCLIP("openai/clip-vit-large-patch14-not-cached")


def test_built_model_needs_an_explicit_tokenizer(tiny_clip: str) -> None:
    model = load_pretrained(CLIPModel, tiny_clip)
    with pytest.raises(ValueError, match="tokenizer"):
        FrozenCLIP(model)
    assert FrozenCLIP(model, tokenizer=tiny_clip).model is model
