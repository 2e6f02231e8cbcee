"""A quiet, honest console: each Lightning message once, W&B silent unless asked, separator lines no wider than
80 columns off a terminal."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from pneumollm.cli.aggregate import main as aggregate_main
from pneumollm.utils.console import RULE_WIDTH, rule
from tests.helpers import make_toy_manifest, subprocess_env
from tests.test_training import TOY


def _train(root: Path, manifest: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pneumollm.cli.train", *TOY, f"data.source.manifest={manifest}",
               f"paths.root_dir={root}", f"hydra.run.dir={root / 'run'}", "trainer.max_epochs=1", "logger=wandb",
               *extra]
    root.mkdir(parents=True, exist_ok=True)
    environment = subprocess_env()
    environment.pop("WANDB_SILENT", None)  # what the console script does by itself, not what make or CI set
    return subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=600)


def test_each_lightning_message_once_and_wandb_silent_unless_asked(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path / "cohort", n_patients=12, size=40)
    quiet = _train(tmp_path / "quiet", manifest)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    console = quiet.stdout + quiet.stderr
    assert console.count("GPU available: False") == 1, console  # Lightning's handler, not Hydra's root logger too
    assert (tmp_path / "quiet/run/train.log").read_text().count("GPU available: False") == 1  # the log keeps it
    assert not [line for line in console.splitlines() if line.startswith("wandb:")], console
    assert list((tmp_path / "quiet/run/wandb").glob("offline-run-*"))  # W&B still records the run
    verbose = _train(tmp_path / "verbose", manifest, "logger.wandb.verbose=true")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert [line for line in (verbose.stdout + verbose.stderr).splitlines() if line.startswith("wandb:")]


def test_a_rule_is_as_wide_as_a_terminal_and_80_columns_elsewhere() -> None:
    piped = Console(file=io.StringIO(), width=1000, soft_wrap=True)  # what make_console gives off a terminal
    rule(piped, "results/table6/demo")
    (line,) = piped.file.getvalue().splitlines()
    assert len(line) == RULE_WIDTH == 80 and "results/table6/demo" in line
    terminal = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    rule(terminal, "x")
    assert len(terminal.file.getvalue().splitlines()[0]) == 120


def test_aggregating_several_studies_separates_them_with_80_column_rules(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    from tests.test_tables_csv import fake_table6

    for cohort in ("demo", "mine"):
        fake_table6(tmp_path / cohort / "runs", {"baseline": 0.0, "pneumollm": 5.0})
    assert aggregate_main([str(tmp_path), "--num-folds", "3", "--no-wandb", "--bootstrap", "20"]) == 0
    rules = [line for line in capsys.readouterr().out.splitlines() if line.startswith("─")]
    assert len(rules) == 2 and all(len(line) == 80 for line in rules)
