"""The lung-segmentation evaluation command: pairing, per-film CSV, summary JSON."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pneumollm.cli.eval_lungs import main, run
from pneumollm.data.lungs.evaluate import find_pairs
from pneumollm.data.lungs.phantom import drawn_chest
from pneumollm.data.lungs.unet import LungUNet


@pytest.fixture
def film_folder(tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    for seed in range(3):
        film, mask = drawn_chest(240, 220, seed=seed)
        Image.fromarray(film).save(folder / f"film{seed}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f"film{seed}@.png")
    Image.fromarray(drawn_chest(240, 220)[0]).save(folder / "lonely.jpg")  # no mask
    return folder


def test_films_pair_with_their_masks(film_folder):
    pairs, unpaired = find_pairs(film_folder)
    assert [(f.name, m.name) for f, m in pairs] == [(f"film{i}.png", f"film{i}@.png") for i in range(3)]
    assert [p.name for p in unpaired] == ["lonely.jpg"]


def test_threshold_run_writes_csv_summary_and_sheet(film_folder, tmp_path, capsys):
    out = tmp_path / "out"
    summary = run(["--images", str(film_folder), "--segmenter", "threshold", "--out", str(out),
                    "--no-progress", "--worst", "2"])
    with (out / "per_film.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == ["film0.png", "film1.png", "film2.png"]
    assert all(float(row["box_iou"]) > 0.9 and float(row["dice"]) > 0.9 for row in rows)
    assert all(row["status"] == "cropped" for row in rows)
    written = json.loads((out / "summary.json").read_text())
    assert written == summary
    assert summary["films"] == 3 and summary["films_without_mask"] == 1 and summary["failures"] == 0
    assert summary["box_iou"]["min"] <= summary["box_iou"]["median"] <= summary["box_iou"]["mean"] + 0.1
    assert (out / "worst_films.png").is_file()
    assert "bounding-box IoU" in capsys.readouterr().out


def test_failures_are_counted_and_score_the_whole_film(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(np.full((100, 100), 128, np.uint8)).save(folder / "flat.png")
    truth = np.zeros((100, 100), np.uint8)
    truth[20:80, 10:90] = 255
    Image.fromarray(truth).save(folder / "flat_mask.png")
    summary = run(["--images", str(folder), "--segmenter", "threshold", "--out", str(tmp_path / "o"),
                    "--mask-suffix", "_mask.png", "--no-progress", "--worst", "0"])
    assert summary["failures"] == 1 and summary["dice"]["mean"] == 0.0
    assert summary["box_iou"]["mean"] == pytest.approx(0.6 * 0.8)  # the whole film against the true box
    assert "uniform" in next(iter(summary["failure_reasons"]))


def test_unet_option_takes_weights(film_folder, tmp_path):
    weights = tmp_path / "unet.pt"
    torch.save(LungUNet().state_dict(), weights)
    summary = run(["--images", str(film_folder), "--segmenter", "unet", "--weights", str(weights),
                    "--out", str(tmp_path / "u"), "--no-progress", "--limit", "1", "--worst", "0"])
    assert summary["films"] == 1 and summary["segmenter"] == "unet"


def test_console_entry_point_returns_nothing(film_folder, tmp_path):
    # console scripts call sys.exit(main()): anything but None/int would become an error exit
    assert main(["--images", str(film_folder), "--segmenter", "threshold", "--out", str(tmp_path / "m"),
                 "--no-progress", "--limit", "1", "--worst", "0"]) is None
    assert (tmp_path / "m" / "summary.json").is_file()


def test_folder_without_pairs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no film"):
        main(["--images", str(tmp_path), "--segmenter", "threshold", "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        main(["--images", str(tmp_path / "nope"), "--segmenter", "threshold", "--out", str(tmp_path / "o")])
