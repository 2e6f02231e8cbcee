"""The backbone comparison (experiments/backbones.yaml, models/backbone_rows.py): its configs agree with the trunk and
encoder catalogues, their full sizes build on the meta device with the catalogues' counts, its rows are known by
name and label, and its table lists every row's full-size parameters and memory beside the paper's numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pneumollm.analysis.report import aggregate_table
from pneumollm.analysis.tables import COLUMNS, CSV_COLUMNS, FULL_SIZE_COLUMNS
from pneumollm.models.arm_param_count import full_size_row
from pneumollm.models.backbone_rows import BACKBONE_ROWS, backbone_row, rows_of
from pneumollm.models.components.trunk_architectures import TRUNK_ARCHITECTURES, TRUNK_CHECKPOINTS
from pneumollm.models.components.trunk_families import trunk_family
from pneumollm.models.registry import arm_label, is_arm, paper_row, row_names
from pneumollm.models.tiny import TINY_TRUNKS
from pneumollm.models.trunk_sizes import trunk_size
from pneumollm.models.vision_backbones import backbone_sizes, encoder_config
from pneumollm.paths import conf_dir, experiments_dir
from tests.helpers import compose_train, markdown_rows

CONF = conf_dir()
SWEEP = experiments_dir() / "backbones.yaml"


def _node(part: str, name: str):
    return OmegaConf.load(CONF / part / f"{name}.yaml")


def _sweep_arms() -> list[str]:
    return yaml.safe_load(SWEEP.read_text())["hydra"]["sweeper"]["params"]["arm"].split(",")


def _tiny_trunk_of(architecture: str) -> str:
    model_type = TRUNK_ARCHITECTURES[architecture]["model_type"]
    return next(f"tiny_{family}" for family, values in TINY_TRUNKS.items() if values["model_type"] == model_type)


def test_every_row_has_its_arm_and_both_sizes_of_its_choice_and_nothing_else_is_a_backbone_arm() -> None:
    for row in BACKBONE_ROWS.values():
        arm = yaml.safe_load((CONF / "arm" / f"{row.arm}.yaml").read_text())
        assert arm["defaults"] == [{f"override /{row.part}": f"${{size}}_{row.choice}"}], row.arm
        assert arm["experiment"] == {"arm": row.arm}  # the label comes from backbone_rows, not the file
        assert all((CONF / row.part / f"{size}_{row.choice}.yaml").is_file() for size in ("tiny", "full"))
    assert {p.stem for p in (CONF / "arm").glob("backbone_*.yaml")} == set(BACKBONE_ROWS)
    assert len(rows_of("llm")) >= 8 and len(rows_of("encoder")) >= 5
    with pytest.raises(ValueError, match="unknown part"):
        rows_of("neck")


@pytest.mark.parametrize("row", rows_of("llm"), ids=lambda r: r.choice)
def test_trunk_choices_follow_the_checkpoint_catalogue(row) -> None:
    checkpoint = TRUNK_CHECKPOINTS[row.source]
    full, tiny = _node("llm", f"full_{row.choice}"), _node("llm", f"tiny_{row.choice}")
    assert (full.name_or_path, full.architecture, full.pretrained) == (checkpoint.hub_id, checkpoint.architecture,
                                                                       True)
    assert full.frozen_dtype == "bfloat16" and tiny.frozen_dtype == "float32"
    assert (tiny.architecture, tiny.pretrained, tiny.name_or_path) == (_tiny_trunk_of(checkpoint.architecture),
                                                                       False, None)
    family = trunk_family(TRUNK_ARCHITECTURES[checkpoint.architecture]["model_type"])
    for node in (full, tiny):  # the family accepts the attention setting (Gemma-2: eager)
        assert family.attention(node.attn_implementation) in family.attn_implementations
    # apart from the weights and their size, the two sizes are the same trunk settings
    same = {"name_or_path", "pretrained", "architecture", "frozen_dtype"}
    assert {k: v for k, v in full.items() if k not in same} == {k: v for k, v in tiny.items() if k not in same}


@pytest.mark.parametrize("row", rows_of("encoder"), ids=lambda r: r.choice)
def test_encoder_choices_follow_the_vision_catalogue(row) -> None:
    full, tiny = _node("encoder", f"full_{row.choice}"), _node("encoder", f"tiny_{row.choice}")
    for node, settings in ((full, encoder_config(row.source, pretrained=True)),
                           (tiny, encoder_config(row.source, pretrained=False, size="tiny"))):
        assert {k: node[k] for k in settings} == settings
    random_full = encoder_config(row.source, pretrained=False)
    if "architecture" in random_full:  # Hugging Face towers: the random build is the catalogue's architecture
        assert full.architecture == random_full["architecture"]


@pytest.mark.parametrize("row", rows_of("llm"), ids=lambda r: r.choice)
def test_full_trunk_choice_builds_on_meta_with_the_trunk_table_counts(row) -> None:
    node = OmegaConf.merge(_node("llm", f"full_{row.choice}"), {"pretrained": False})
    with torch.device("meta"):
        trunk = instantiate(node)
    expected = trunk_size(TRUNK_CHECKPOINTS[row.source].architecture)
    assert sum(p.numel() for p in trunk.parameters() if not p.requires_grad) == expected.frozen
    assert sum(p.numel() for p in trunk.parameters() if p.requires_grad) == expected.repadapter
    assert trunk.family.name == expected.family


@pytest.mark.parametrize("row", rows_of("encoder"), ids=lambda r: r.choice)
def test_full_encoder_choice_builds_on_meta_with_the_backbone_table_counts(row) -> None:
    node = OmegaConf.merge(_node("encoder", f"full_{row.choice}"), {"pretrained": False})
    with torch.device("meta"):
        encoder = instantiate(node)
    expected = backbone_sizes(row.source)
    assert sum(p.numel() for p in encoder.parameters() if not p.requires_grad) == expected.frozen
    assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) == expected.adapters
    assert (encoder.width, list(encoder.block_indices)) == (expected.width, expected.block_indices)


def test_the_sweep_runs_every_row_against_the_papers_pneumollm() -> None:
    sweep = yaml.safe_load(SWEEP.read_text())
    assert sweep["experiment"] == {"name": "backbones", "reference": "pneumollm"}
    assert sweep["hydra"]["sweeper"]["params"]["data.fold"] == "range(5)"
    arms = _sweep_arms()
    assert arms == ["pneumollm", *BACKBONE_ROWS]  # the reference, then every row in the table's order
    for arm in arms:  # every arm is known by name: the paper's row or a registered row beyond the paper
        assert (paper_row(arm) is not None) != (backbone_row(arm) is not None) and not is_arm(arm), arm
    assert row_names()[-len(BACKBONE_ROWS):] == list(BACKBONE_ROWS)


@pytest.mark.parametrize(("size", "arm", "label", "encoder", "llm"), [
    ("tiny", "backbone_gemma2_9b", "Gemma-2-9B", "tiny_clip_vit_l14", "tiny_gemma2_9b"),
    ("full", "backbone_gemma2_9b", "Gemma-2-9B", "full_clip_vit_l14", "full_gemma2_9b"),
    ("full", "backbone_rad_dino", "RAD-DINO", "full_rad_dino", "full_llama7b"),
])
def test_a_row_is_labelled_and_sized_by_its_arm(tmp_path: Path, size: str, arm: str, label: str, encoder: str,
                                                llm: str) -> None:
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_train([f"paths.root_dir={tmp_path}", "logger=none", f"size={size}", f"arm={arm}"],
                        run_dir=tmp_path / "run")
    picked = HydraConfig.get().runtime.choices
    assert (cfg.experiment.arm, cfg.experiment.label, arm_label(arm)) == (arm, label, label)
    assert (picked.encoder, picked.llm) == (encoder, llm)
    if size == "full":  # the hub ids are used at full size
        assert cfg.encoder.name_or_path == _node("encoder", encoder).name_or_path and cfg.encoder.pretrained
        assert cfg.llm.name_or_path == _node("llm", llm).name_or_path and cfg.llm.pretrained


def test_full_size_row_counts_the_swapped_part() -> None:
    paper = full_size_row("pneumollm")
    clip = backbone_sizes("clip_vit_l14")
    llama = trunk_size("llama7b")
    assert paper.trainable == 2_704_000 and paper.frozen == clip.frozen + llama.frozen
    assert paper.frozen_bf16_bytes == 2 * paper.frozen
    assert paper.frozen_nf4_bytes == 2 * clip.frozen + llama.frozen_bytes["nf4+dq"]  # llm.quantization=nf4
    mistral = full_size_row("backbone_mistral7b")
    trunk = trunk_size("mistral7b_v01")
    assert mistral.frozen == clip.frozen + trunk.frozen
    assert mistral.frozen_nf4_bytes == 2 * clip.frozen + trunk.frozen_bytes["nf4+dq"]
    rad_dino = full_size_row("backbone_rad_dino")
    assert rad_dino.frozen == backbone_sizes("rad_dino").frozen + llama.frozen
    assert full_size_row("resnet50").frozen_nf4_bytes is None  # no trunk to quantise
    assert full_size_row("no_such_row") is None


def _fake_study(runs: Path, arms: dict[str, str]) -> None:
    """Three folds per arm (arm -> label), as in tests/test_tables_csv.py."""
    from tests.test_tables_csv import fake_table6

    fake_table6(runs, dict.fromkeys(arms, 0.0))
    for arm, label in arms.items():
        for path in (runs / arm).glob("fold*/metrics.json"):
            metrics = json.loads(path.read_text())
            path.write_text(json.dumps({**metrics, "label": label}))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_backbone_table_lists_full_size_parameters_and_memory_beside_the_papers_row(tmp_path: Path) -> None:
    arms = {"backbone_rad_dino": "RAD-DINO", "pneumollm": "PneumoLLM", "backbone_mistral7b": "Mistral-7B"}
    _fake_study(tmp_path / "runs", arms)
    report = aggregate_table(tmp_path / "runs", tmp_path, "backbones", num_folds=3, n_boot=50, use_wandb=False,
                             reference="pneumollm")
    rows = _rows(tmp_path / "table.csv")
    assert [r["arm"] for r in rows] == ["pneumollm", "backbone_mistral7b", "backbone_rad_dino"]  # reference first
    assert list(rows[0]) == list(CSV_COLUMNS)
    for row in rows:
        size = full_size_row(row["arm"])
        assert int(row["full_size_trainable_params"]) == size.trainable
        assert int(row["full_size_frozen_params"]) == size.frozen
        assert float(row["full_size_frozen_bf16_gb"]) == size.frozen_bf16_bytes / 1e9
        assert float(row["full_size_frozen_nf4_gb"]) == size.frozen_nf4_bytes / 1e9
    ours, mistral = rows[0], rows[1]
    assert float(ours["paper_auc"]) == 78.98 and float(ours["paper_trainable_params_m"]) == 2.70  # Table 2's row
    assert float(ours["paper_memory_gb"]) == 15.48  # the paper gives PneumoLLM's memory in Table 4
    assert all(mistral[c] == "" for c in CSV_COLUMNS if c.startswith("paper_"))  # beyond the paper
    assert ours["delta_avg"] == "" and float(mistral["delta_avg"]) == 0.0
    cells = {c[0]: dict(zip(COLUMNS, c)) for c in report.cells}
    assert cells["Mistral-7B"]["full-size frozen bf16 (GB)"] == "14.57"
    assert cells["PneumoLLM"]["full-size frozen nf4 (GB)"] == "3.95"
    assert cells["RAD-DINO"]["paper AUC"] == "–" and cells["PneumoLLM"]["ΔAVG [95% CI]"] == "ref"
    markdown = (tmp_path / "table.md").read_text()
    header = [cell.strip() for cell in markdown.splitlines()[2].split("|")[1:-1]]
    assert header[11:15] == list(FULL_SIZE_COLUMNS) and "paper AUC" in header
    assert "backbones is not in the paper" in markdown


def test_two_rows_run_end_to_end_and_aggregate_into_the_backbone_table(toy_cohort, tmp_path: Path,
                                                                      tiny_cache_one_thread) -> None:
    from tests.test_sweeps import _run_sweep_in_process

    manifest = toy_cohort(n_patients=8, size=40)
    jobs = [[f"arm={arm}", f"data.fold={fold}"] for arm in ("pneumollm", "backbone_phi3_mini") for fold in (0, 1)]
    _run_sweep_in_process("backbones", tmp_path, manifest, jobs)
    (runs,) = (tmp_path / "results" / "backbones").glob("manifest-*/runs")
    aggregate_table(runs, runs.parent, "backbones", num_folds=2, n_boot=50, use_wandb=False)
    rows = {r["arm"]: r for r in _rows(runs.parent / "table.csv")}
    assert list(rows) == ["pneumollm", "backbone_phi3_mini"]
    assert rows["backbone_phi3_mini"]["label"] == "Phi-3-mini" and rows["pneumollm"]["label"] == "PneumoLLM"
    phi3 = rows["backbone_phi3_mini"]
    assert int(phi3["full_size_trainable_params"]) == full_size_row("backbone_phi3_mini").trainable
    assert int(phi3["trainable_params"]) < 100_000  # the run itself was the tiny stand-in
    assert phi3["delta_avg"] != "" and rows["pneumollm"]["delta_avg"] == ""  # against the reference


def _printed_and_documented(capsys: pytest.CaptureFixture, *arms: str) -> tuple[list[list[str]], list[list[str]]]:
    from pneumollm.cli.backbone_sizes import main

    assert main(["--rows", *arms]) == 0
    docs = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text()
    return markdown_rows(capsys.readouterr().out), markdown_rows(docs)


def test_the_rows_command_prints_the_documented_counts(capsys: pytest.CaptureFixture) -> None:
    printed, documented = _printed_and_documented(capsys, "pneumollm", "backbone_phi3_mini")
    assert [row[0] for row in printed] == ["arm", "pneumollm", "backbone_phi3_mini"]
    assert printed[1][4:] == ["2,704,000", "6,779,451,392", "13.56", "3.95"]
    assert all(row in documented for row in printed)


@pytest.mark.slow
def test_every_documented_row_is_what_the_command_prints(capsys: pytest.CaptureFixture) -> None:
    printed, documented = _printed_and_documented(capsys)
    assert len(printed) == 2 + len(BACKBONE_ROWS) and all(row in documented for row in printed)
