"""Every model-part YAML instantiates through Hydra and trains one step (full-size choices shrunk)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pneumollm.models.backbone_rows import BACKBONE_ROWS, rows_of
from pneumollm.models.components.encoders import VisionEncoder
from pneumollm.models.param_count import CONF_DIR, DEFAULT_CHOICES, GROUPS, build_model, compose_model_config

OFFLINE_SMALL = {
    "full_clip_vit_l14": ["encoder.pretrained=false", "encoder.frozen_dtype=float32",
                          "encoder.config_overrides.hidden_size=32", "encoder.config_overrides.intermediate_size=64",
                          "encoder.config_overrides.num_hidden_layers=8",
                          "encoder.config_overrides.num_attention_heads=2", "encoder.config_overrides.patch_size=32"],
    "full_vit_b16_in21k": ["encoder.pretrained=false", "encoder.frozen_dtype=float32",
                           "encoder.model_kwargs.embed_dim=32", "encoder.model_kwargs.depth=4",
                           "encoder.model_kwargs.num_heads=2", "encoder.model_kwargs.patch_size=32"],
    "full_vit_l16_in21k": ["encoder.pretrained=false", "encoder.frozen_dtype=float32",
                           "encoder.model_kwargs.embed_dim=32", "encoder.model_kwargs.depth=8",
                           "encoder.model_kwargs.num_heads=2", "encoder.model_kwargs.patch_size=32"],
    "full_conv_stem": ["encoder.width=32"],
    "full_llama7b": ["llm.pretrained=false", "llm.frozen_dtype=float32", "llm.config_overrides.hidden_size=64",
                     "llm.config_overrides.intermediate_size=128", "llm.config_overrides.num_hidden_layers=2",
                     "llm.config_overrides.num_attention_heads=2", "llm.config_overrides.num_key_value_heads=2",
                     "llm.config_overrides.vocab_size=32"],
}

def _shrunk_backbones() -> dict[str, list[str]]:
    """The backbone comparison's full choices (models/backbone_rows.py) built offline with their tiny_ twin's
    random architecture (their full architectures are counted on the meta device: tests/test_backbone_rows.py)."""
    shrunk = {}
    for row in BACKBONE_ROWS.values():
        tiny = OmegaConf.load(CONF_DIR / row.part / f"tiny_{row.choice}.yaml")
        small = ([f"{row.part}.architecture={tiny.architecture}"] if "architecture" in tiny else
                 [f"{row.part}.model_kwargs.{k}={v}" for k, v in tiny.model_kwargs.items()])
        shrunk[f"full_{row.choice}"] = [f"{row.part}.pretrained=false", f"{row.part}.frozen_dtype=float32", *small]
    return shrunk


OFFLINE_SMALL |= _shrunk_backbones()
CHOICES = {
    "encoder": ["tiny_clip_vit_l14", "full_clip_vit_l14", "tiny_vit_b16_in21k", "full_vit_b16_in21k",
                "tiny_vit_l16_in21k", "full_vit_l16_in21k", "tiny_conv_stem", "full_conv_stem",
                *(f"{size}_{row.choice}" for row in rows_of("encoder") for size in ("tiny", "full"))],
    "token_engine": ["cmte", "coop", "cocoop", "none"],
    "neck": ["bottleneck"],
    "emitter": ["emitter", "full"],
    "llm": ["tiny_llama7b", "full_llama7b", "none",
            *(f"{size}_{row.choice}" for row in rows_of("llm") for size in ("tiny", "full"))],
    "head": ["mean_linear"],
}


def test_every_yaml_of_the_model_groups_is_covered_here() -> None:
    for group in GROUPS:
        on_disk = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert on_disk == sorted(CHOICES[group]), group


# Each choice over the default tiny model; the default choices (cmte, bottleneck, mean_linear...) all build that
# same model, so it is built once.
VARIED = [("defaults", "all")] + [(g, c) for g, cs in CHOICES.items() for c in cs if c != DEFAULT_CHOICES[g]]


@pytest.mark.parametrize(("group", "choice"), VARIED)
def test_choice_instantiates_and_trains_one_step(group: str, choice: str) -> None:
    torch.manual_seed(0)
    choices = {} if group == "defaults" else {group: choice}
    model = build_model(compose_model_config(choices, OFFLINE_SMALL.get(choice, [])))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=1e-3)
    logits = model(torch.rand(2, 1, 224, 224))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.neck.parameters())
    optimiser.step()


def test_encoder_yaml_instantiates_on_its_own() -> None:
    node = OmegaConf.load(CONF_DIR / "encoder" / "tiny_clip_vit_l14.yaml")
    encoder = instantiate(node)
    assert isinstance(encoder, VisionEncoder) and (encoder.num_tokens, encoder.width) == (6, 32)


def test_partial_groups_are_built_by_the_model_with_its_sizes() -> None:
    model = build_model(compose_model_config({"token_engine": "cmte"}, ["token_engine.m=8", "neck.hidden=16",
                                                                       "model.num_classes=3"]))
    assert model.token_engine.num_tokens == 8 and model.token_engine.width == model.encoder.width
    assert model.neck.layers[0].out_features == 16 and model.neck.layers[2].out_features == model.llm.hidden_size
    assert model(torch.rand(1, 1, 224, 224)).shape == (1, 3)


def test_llm_none_uses_its_configured_width() -> None:
    model = build_model(compose_model_config({"llm": "none"}, ["llm.hidden_size=24"]))
    assert model.neck.layers[2].out_features == 24 and model.head.linear.in_features == 24


def test_unknown_choice_names_the_available_ones() -> None:
    with pytest.raises(FileNotFoundError, match="tiny_clip_vit_l14"):
        compose_model_config({"encoder": "clip_vit_h14"})


SIZED_GROUPS = ("encoder", "llm", "model")
UNSIZED = {"none", "pneumollm", "timm_resnet18"}


def test_every_sized_choice_has_both_sizes_and_is_picked_by_size() -> None:
    import yaml

    sized = {}
    for group in SIZED_GROUPS:
        names = [p.stem for p in (CONF_DIR / group).glob("*.yaml")]
        sized[group] = {n.removeprefix("tiny_") for n in names if n.startswith("tiny_")}
        assert sized[group] == {n.removeprefix("full_") for n in names if n.startswith("full_")}, group
        assert {n for n in names if not n.startswith(("tiny_", "full_"))} <= UNSIZED, group
    for path in [CONF_DIR / "train.yaml", *sorted((CONF_DIR / "arm").glob("*.yaml"))]:
        for entry in yaml.safe_load(path.read_text()).get("defaults") or []:
            for key, choice in (entry.items() if isinstance(entry, dict) else []):
                group = key.removeprefix("override /")
                if group in SIZED_GROUPS and choice not in UNSIZED:
                    assert choice.startswith("${size}_"), (path.name, entry)  # never a fixed size
                    assert choice.removeprefix("${size}_") in sized[group], (path.name, entry)


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_an_encoder_row_and_the_default_parts_follow_the_size(size: str, tmp_path) -> None:
    from hydra.core.hydra_config import HydraConfig

    from tests.helpers import compose_train

    compose_train([f"paths.root_dir={tmp_path}", f"size={size}", "arm=encoder_vit_b16_in21k"], run_dir=tmp_path)
    choices = HydraConfig.get().runtime.choices
    assert (choices.encoder, choices.llm) == (f"{size}_vit_b16_in21k", f"{size}_llama7b")


@pytest.mark.parametrize(("size", "epochs"), [("tiny", 30), ("full", 100)])
def test_table2_picks_its_epochs_by_size(size: str, epochs: int, tmp_path) -> None:
    from pneumollm.paths import experiments_dir
    from tests.helpers import compose_train

    cfg = compose_train([f"paths.root_dir={tmp_path}", f"hydra.searchpath=[file://{CONF_DIR}]", f"size={size}"],
                        run_dir=tmp_path, config_name="table2", config_dir=experiments_dir())
    assert cfg.trainer.max_epochs == epochs
