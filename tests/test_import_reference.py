"""pneumollm-import-reference: a tiny run written back in the reference's checkpoint format and imported predicts
what the run predicted; the reference's adapter and CMTE/neck/head arithmetic equal the suite's after the mapping;
unsafe files, the no-residual adapter variant and mismatched tensors are refused with the reason."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from pneumollm.cli.import_reference import main as import_main
from pneumollm.cli.predict import main as predict_main
from pneumollm.inference.models import load_trained
from pneumollm.models.components.adapters import RepAdapter
from pneumollm.models.param_count import build_model, compose_model_config
from pneumollm.models.weights.reference_checkpoint import (
    ReferenceCheckpointError,
    imported_parameter_shapes,
    load_reference_checkpoint,
    map_reference_state,
    suite_to_reference_state,
    to_suite_tensor,
)
from pneumollm.training.run import run_fold
from tests.helpers import compose_train, make_toy_manifest

# The tiny run is configured as the reference runs: frozen (never trained) CMTE, ImageNet input statistics.
REFERENCE_LIKE = ["token_engine.freeze=true", "encoder.normalization=imagenet"]
BASE = ["data=manifest", "lungs=none", "trainer=cpu", "logger=none", "data.progress=false",
        "data.preprocess_workers=1", "data.num_folds=3", "data.batch_size=8", "callbacks.progress=null",
        *REFERENCE_LIKE]
# Three epochs at a constant, large step, the last one kept: the adapters' up-projections (zero at the start) move
# far enough that a wrong adapter mapping changes the probabilities by ~1e-3, far beyond the tolerance.
TRAINING = ["trainer.max_epochs=3", "scheduler=none", "optimizer.lr=1e-2", "selection=last"]
# The reference's args for the tiny towers (multiscale 1: CLS after each of the 6 tiny blocks), plus some that
# do not shape the model.
TINY_ARGS = {"multiscale": 1, "RPO_K": 4, "adapter_dim": 8, "hidden_proj": 128, "adapter_type": "attn",
             "visual_adapter_type": "router", "bits": "16bit", "llm_model": "7B", "seed": 20,
             "learning_rate": 3e-4, "data_root": "/dataset/", "multisteps": [], "adapter_scale": 1.0}
# The tiny run's towers are fp32: the import's fp16 default (the reference's) would change the numbers, not the model.
TINY_IMPORT = ["--size", "tiny", "--set", "lungs=none", "encoder.frozen_dtype=float32", "llm.frozen_dtype=float32"]


def save_reference(path: Path, model: dict[str, torch.Tensor], **args: object) -> Path:
    """A checkpoint as the reference's util/misc.save_model writes it."""
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 3e-4, "params": [0]}]},
                "epoch": 41, "lr_scheduler": {"t_initial": 100, "warmup_t": 2, "base_values": [3e-4]},
                "args": argparse.Namespace(**{**TINY_ARGS, **args})}, path)
    return path


def reference_state_of(net: nn.Module) -> dict[str, torch.Tensor]:
    """The reference's ``'model'`` entry for a suite PneumoLLM (the inverse mapping)."""
    shapes = imported_parameter_shapes(net)
    return suite_to_reference_state({k: v for k, v in net.state_dict().items() if k in shapes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_cache_one_thread: None) -> Path:
    """Fold 0 of the tiny PneumoLLM, configured like the reference, on a toy cohort: <root>/run."""
    root = tmp_path_factory.mktemp("trained")
    manifest = make_toy_manifest(root / "cohort", n_patients=15, films_per_patient=1, size=64)
    cfg = compose_train([*BASE, *TRAINING, f"data.source.manifest={manifest}", f"paths.root_dir={root}", "data.fold=0"],
                        run_dir=root / "run")
    run_fold(cfg)
    return root


@pytest.fixture(scope="module")
def tiny_net() -> nn.Module:
    """A tiny PneumoLLM as an import configures it, with random values in every imported parameter (the
    zero-initialised adapter up-projections too, so that every mapped tensor matters)."""
    net = build_model(compose_model_config(overrides=REFERENCE_LIKE))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name in imported_parameter_shapes(net):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return net.eval()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_an_imported_run_predicts_its_own_test_films(trained: Path, tmp_path: Path) -> None:
    run = trained / "run"
    net = load_trained(run, fold_adapters=False).folds[0].net
    ups = [p for n, p in net.named_parameters() if ".adapter.up.weight" in n]
    assert min(p.abs().max().item() for p in ups) > 1e-2  # trained adapters: the check below covers them
    checkpoint = save_reference(tmp_path / "trainable_bestvalpt.pth", reference_state_of(net))
    copy = tmp_path / "fold1" / "trainable_bestvalpt.pth"
    copy.parent.mkdir()
    copy.write_bytes(checkpoint.read_bytes())
    export = tmp_path / "export"
    assert import_main([str(checkpoint), str(copy), "--out", str(export), "--fingerprint", *TINY_IMPORT]) == 0

    # the args and the quirks rebuild the run's model config exactly
    run_config = OmegaConf.load(run / "config.yaml")
    for fold in (0, 1):
        imported = OmegaConf.load(export / f"fold{fold}.yaml")
        assert OmegaConf.to_container(imported.model) == OmegaConf.to_container(run_config.model)
        assert imported.experiment.arm == "pneumollm_reference" and imported.data.task == "binary"
    record = json.loads((export / "export.json").read_text())
    assert [c["sha256"] for c in record["imported"]["checkpoints"]] == \
        [hashlib.sha256(checkpoint.read_bytes()).hexdigest()] * 2
    assert record["imported"]["checkpoints"][0]["args"]["data_root"] == "/dataset/"
    assert record["imported"]["base_weights_checked"] is True
    assert all(f["frozen_fingerprints"] and f["selected_epoch"] == 41 for f in record["folds"])

    rows = _rows(run / "predictions.csv")
    films = [str(trained / "cohort" / r["image_id"]) for r in rows]
    expected = {str(trained / "cohort" / r["image_id"]): float(r["prob"]) for r in rows}
    out = tmp_path / "p.csv"
    assert predict_main([str(export), *films, "--out", str(out), "--no-progress"]) == 0
    predicted = _rows(out)
    assert [r["status"] for r in predicted] == ["ok"] * len(films)
    assert len({round(float(r["prob"]), 4) for r in predicted}) > 1  # a model, not a constant
    for row in predicted:
        assert float(row["prob"]) == pytest.approx(expected[str(Path(row["path"]))], abs=1e-5)
        assert float(row["prob_fold0"]) == pytest.approx(float(row["prob_fold1"]), abs=1e-7)


def test_the_fingerprinted_import_refuses_other_base_weights(trained: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    net = load_trained(trained / "run", fold_adapters=False).folds[0].net
    checkpoint = save_reference(tmp_path / "ckpt.pth", reference_state_of(net))
    export = tmp_path / "export"
    assert import_main([str(checkpoint), "--out", str(export), "--fingerprint", *TINY_IMPORT]) == 0
    film = next((trained / "cohort/films").glob("*.png"))
    with pytest.raises(SystemExit) as stop:
        predict_main([str(export), str(film), "--out", str(tmp_path / "x.csv"), "--set", "model.llm.init_seed=7"])
    assert stop.value.code == 2 and "base weights differ from the ones recorded" in capsys.readouterr().err


def test_the_default_import_repeats_the_reference_quirks_and_says_what_it_is(tiny_net: nn.Module,
                                                                            tmp_path: Path) -> None:
    checkpoint = save_reference(tmp_path / "trainable_bestvalpt.pth", reference_state_of(tiny_net), bits="8bit")
    export = tmp_path / "export"
    assert import_main([str(checkpoint), "--out", str(export), "--size", "tiny"]) == 0
    model = OmegaConf.load(export / "fold0.yaml").model
    assert model.token_engine.freeze is True and model.token_engine.m == 4
    assert model.encoder.normalization == "imagenet"
    assert model.encoder.frozen_dtype == model.llm.frozen_dtype == "float16"
    assert model.llm.quantization == "int8"  # args.bits=8bit
    assert model.emitter.mode == "emitter"
    record = json.loads((export / "export.json").read_text())
    assert record["imported"]["base_weights_checked"] is False and record["folds"][0]["frozen_fingerprints"] is None
    card = (export / "README.md").read_text()
    for text in ("imported, not trained by this suite", "Base weights unchecked", record["imported"]["checkpoints"]
                 [0]["sha256"], "`token_engine.freeze` = True", "rows swapped", "are **not** checked",
                 "## Intended use and limitations", "Research use only", "## Model performance", "Not by this suite"):
        assert text in card
    # the weights are the mapped ones, the CMTE's random values included
    from safetensors.torch import load_file

    weights = load_file(str(export / "fold0.safetensors"))
    reference = tiny_net.state_dict()
    assert set(weights) == {f"net.{k}" for k in imported_parameter_shapes(tiny_net)}
    assert all(torch.equal(v, reference[k.removeprefix("net.")]) for k, v in weights.items())


def test_the_inverse_mapping_gives_the_reference_state_dict_names_and_shapes(tiny_net: nn.Module) -> None:
    """What ``Transformer.state_dict()`` of the reference holds under 'adapter'/'prompt' (tiny widths: CLIP 32,
    6 blocks; LLaMA 64, 2 layers; adapter 8 in 2 groups; CMTE 12 -> 4; neck 128)."""
    def adapters(prefix: str, blocks: int, width: int) -> dict[str, list[int]]:
        shapes = {"conv_A.weight": [8, width, 1], "conv_A.bias": [8], "conv_D.weight": [width, 4, 1],
                  "conv_D.bias": [width]}
        return {f"{prefix}.{i}.adapter_attn.{k}": v for i in range(blocks) for k, v in shapes.items()}

    expected = {**adapters("backbone.visual.transformer.resblocks", 6, 32), **adapters("layers", 2, 64),
                "prompt_meta_net.linear1.weight": [12, 32], "prompt_meta_net.linear1.bias": [12],
                "prompt_meta_net.linear2.weight": [4, 12], "prompt_meta_net.linear2.bias": [4],
                "adapter_proj.conv_A.weight": [128, 32], "adapter_proj.conv_A.bias": [128],
                "adapter_proj.conv_B.weight": [64, 128], "adapter_proj.conv_B.bias": [64],
                "adapter_output_cls.weight": [2, 64]}
    assert {k: list(v.shape) for k, v in reference_state_of(tiny_net).items()} == expected


def test_the_paper_sized_import_expects_the_reference_checkpoint_of_2_70m_parameters() -> None:
    """At full size (built on the meta device: nothing loaded) the default import expects 24 CLIP adapters of
    width 1024, 32 LLaMA adapters of width 4096, the CMTE, neck and head: the paper's 2,704,000 parameters."""
    from pneumollm.inference.reference_import import (
        DEFAULT_ENCODER,
        DEFAULT_LLM,
        compose_import_config,
        expected_parameters,
        import_overrides,
    )
    from pneumollm.models.weights.reference_checkpoint import reference_settings

    settings = reference_settings(TINY_ARGS | {"multiscale": 4}, {})
    config = compose_import_config(import_overrides(settings, "full", DEFAULT_ENCODER, DEFAULT_LLM, Path("out")))
    shapes = expected_parameters(config)
    reference = suite_to_reference_state({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    assert sum(v.numel() for v in reference.values()) == 2_704_000
    assert reference["backbone.visual.transformer.resblocks.23.adapter_attn.conv_D.weight"].shape == (1024, 4, 1)
    assert reference["layers.31.adapter_attn.conv_A.weight"].shape == (8, 4096, 1)
    assert "layers.32.adapter_attn.conv_A.weight" not in reference
    assert set(map_reference_state(reference, shapes)) == set(shapes)
    assert config.model.encoder.name_or_path == DEFAULT_ENCODER and config.model.llm.name_or_path == DEFAULT_LLM


def _reference_adapter(x: torch.Tensor, conv_a: nn.Conv1d, conv_d: nn.Conv1d) -> torch.Tensor:
    """The reference's RepAdapter_Router on tokens [B, T, W]: channels first, pointwise Conv1d down, grouped
    pointwise Conv1d up, residual, back to channels last (dropout off)."""
    channels_first = x.transpose(1, 2)
    return (conv_d(conv_a(channels_first)) + channels_first).transpose(1, 2).contiguous()


@pytest.mark.parametrize(("width", "hidden", "groups"), [(1024, 8, 2), (64, 8, 2), (48, 12, 4)])
def test_the_reference_adapter_equals_the_imported_repadapter(width: int, hidden: int, groups: int) -> None:
    torch.manual_seed(0)
    conv_a = nn.Conv1d(width, hidden, 1, groups=1, bias=True).double()
    conv_d = nn.Conv1d(hidden, width, 1, groups=groups, bias=True).double()
    nn.init.normal_(conv_d.weight)  # the reference zero-initialises it; trained values are not zero
    nn.init.normal_(conv_d.bias)
    with torch.no_grad():  # fp32 values (the checkpoint's dtype), compared in float64
        for param in [*conv_a.parameters(), *conv_d.parameters()]:
            param.copy_(param.float().double())
    ours = RepAdapter(width, hidden, groups).double().eval()
    prefix = "llm.model.layers.0.input_layernorm.adapter"
    ours.load_state_dict({
        "down.weight": to_suite_tensor(f"{prefix}.down.weight", conv_a.weight).double(),
        "down.bias": conv_a.bias.detach(), "up.bias": conv_d.bias.detach(),
        "up.weight": to_suite_tensor(f"{prefix}.up.weight", conv_d.weight, groups).double()})
    x = torch.randn(3, 10, width, dtype=torch.float64)
    with torch.no_grad():
        expected, got = _reference_adapter(x, conv_a, conv_d), ours(x)
    assert (got - x).abs().max() > 1.0  # the adapter changes its input: the comparison is not of identities
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_the_reference_cmte_neck_and_head_equal_the_imported_ones(tiny_net: nn.Module) -> None:
    """The reference's forward after the CLIP tower (trunk left out): prompt_meta_net scores, softmax over the
    source tokens, concatenation, adapter_proj, mean, adapter_output_cls with output 0 = pneumoconiosis."""
    ref = reference_state_of(tiny_net)
    net = build_model(compose_model_config(overrides=REFERENCE_LIKE)).eval()
    net.load_state_dict(map_reference_state(ref, imported_parameter_shapes(net)), strict=False)
    x = torch.randn(5, 6, 32, generator=torch.Generator().manual_seed(1))
    scores = F.linear(F.relu(F.linear(x, ref["prompt_meta_net.linear1.weight"], ref["prompt_meta_net.linear1.bias"])),
                      ref["prompt_meta_net.linear2.weight"], ref["prompt_meta_net.linear2.bias"])
    prompts = torch.softmax(scores.permute(0, 2, 1), dim=-1) @ x
    tokens = F.linear(F.silu(F.linear(torch.cat([x, prompts], 1), ref["adapter_proj.conv_A.weight"],
                                      ref["adapter_proj.conv_A.bias"])),
                      ref["adapter_proj.conv_B.weight"], ref["adapter_proj.conv_B.bias"])
    reference_logits = F.linear(tokens.mean(1), ref["adapter_output_cls.weight"])
    with torch.no_grad():
        ours = net.head(net.neck(torch.cat([x, net.token_engine(x)], 1)))
    torch.testing.assert_close(ours, reference_logits[:, [1, 0]], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.softmax(-1)[:, 1], reference_logits.softmax(-1)[:, 0], atol=1e-6, rtol=0)


def _touch(path: str) -> None:  # what a malicious checkpoint would run when fully unpickled
    Path(path).write_text("ran")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


def test_a_checkpoint_with_another_pickled_object_is_refused_without_running_it(
        tiny_net: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": reference_state_of(tiny_net), "args": argparse.Namespace(**TINY_ARGS),
                "extra": _Payload(marker)}, path)
    with pytest.raises(SystemExit) as stop:
        import_main([str(path), "--out", str(tmp_path / "export"), "--size", "tiny"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "refused: the file contains a pickled tests.test_import_reference._touch" in err
    assert "nothing from the file was run" in err
    assert not marker.exists() and not (tmp_path / "export").exists()


def test_the_reference_args_namespace_and_plain_containers_load(tiny_net: nn.Module, tmp_path: Path) -> None:
    loaded = load_reference_checkpoint(save_reference(tmp_path / "ok.pth", reference_state_of(tiny_net)))
    assert loaded.epoch == 41 and loaded.args["multisteps"] == [] and loaded.args["multiscale"] == 1


def _conv_b(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("adapter_attn.conv_D", "adapter_attn.conv_B"): v for k, v in state.items()}


@pytest.mark.parametrize(("change", "args", "expected"), [
    (_conv_b, {"visual_adapter_type": "normal"}, "args.visual_adapter_type='normal'"),
    (_conv_b, {}, "its adapter_attn.conv_B tensors"),
], ids=["args", "keys"])
def test_checkpoints_of_the_adapter_without_residual_are_refused_with_the_reason(
        tiny_net: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture, change, args, expected) -> None:
    path = save_reference(tmp_path / "ckpt.pth", change(reference_state_of(tiny_net)), **args)
    with pytest.raises(SystemExit) as stop:
        import_main([str(path), "--out", str(tmp_path / "export"), "--size", "tiny"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and expected in err
    assert "returns U(D x) without adding x back" in err and "would change the function" in err


@pytest.mark.parametrize(("args", "expected"), [
    ({"adapter_type": "block"}, "adapter_type='block'"),
    ({"visual_adapter_type": "router_block"}, "visual_adapter_type='router_block'"),
    ({"RPO_K": 0}, "args.RPO_K=0 must be a positive integer (with no diagnosis tokens"),
    ({"adapter_dim": 7}, "args.adapter_dim=7 is not divisible"),
    ({"bits": "2bit"}, "args.bits='2bit'"),
])
def test_args_the_suite_cannot_represent_are_refused_by_name(tiny_net: nn.Module, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture, args, expected) -> None:
    path = save_reference(tmp_path / "ckpt.pth", reference_state_of(tiny_net), **args)
    with pytest.raises(SystemExit) as stop:
        import_main([str(path), "--out", str(tmp_path / "export"), "--size", "tiny"])
    assert stop.value.code == 2 and expected in capsys.readouterr().err


def test_missing_unexpected_and_misshaped_tensors_are_named(tiny_net: nn.Module) -> None:
    state = reference_state_of(tiny_net)
    dropped = [k for k in state if k.startswith("layers.")][:7]
    for key in dropped:
        del state[key]
    state["img_prompt"] = torch.zeros(4, 32)
    state["adapter_output_cls.weight"] = torch.zeros(3, 64)
    with pytest.raises(ReferenceCheckpointError) as err:
        map_reference_state(state, imported_parameter_shapes(tiny_net), "ckpt.pth")
    message = str(err.value)
    assert message.startswith("ckpt.pth: ")
    assert f"missing tensors (7): {dropped[0]} [8, 64, 1]" in message and dropped[4] in message
    assert dropped[5] not in message and "..." in message  # five named at most
    assert "unexpected tensors (1): img_prompt [4, 32]" in message
    assert "wrong shapes (1): adapter_output_cls.weight [3, 64], expected [2, 64]" in message


def test_args_that_disagree_with_the_tensors_are_refused(tiny_net: nn.Module, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    path = save_reference(tmp_path / "ckpt.pth", reference_state_of(tiny_net), RPO_K=3)
    with pytest.raises(SystemExit) as stop:
        import_main([str(path), "--out", str(tmp_path / "export"), "--size", "tiny"])
    assert stop.value.code == 2
    assert "wrong shapes (2): prompt_meta_net.linear2.weight [4, 12], expected [3, 12]" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "expected"), [
    ({"state_dict": {}}, "no 'model' entry (found ['state_dict'])"),
    ({"model": {"layers.0.adapter_attn.conv_A.weight": "not a tensor"}}, "'model' is not a mapping of names to"),
    ({"model": {}}, "no 'args'"),
])
def test_files_without_the_reference_layout_are_refused(tmp_path: Path, content: dict, expected: str) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(content, path)
    with pytest.raises(ReferenceCheckpointError, match=re.escape(expected)):
        load_reference_checkpoint(path)


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ReferenceCheckpointError, match="not a readable torch checkpoint"):
        load_reference_checkpoint(path)
