"""``pneumollm-predict MODEL INPUT... --out FILE.csv``: apply a trained arm to new films.

MODEL is one fold's run folder, an arm's folder with ``fold*/`` (the folds' ensemble: the mean of their
probabilities), or a folder made by ``pneumollm-export``. INPUT are DICOM/PNG/JPEG files, folders (searched
recursively; films are found by content, whatever their names) or a manifest CSV (a ``path`` column; its other
columns are copied to the output). Every input gets a row; the ``shift`` column names the films that look unlike
the model's training films (docs/prediction.md). Exit status 0 when at least one film was predicted, 2 when none
was (the CSV still lists why).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumollm.errors import UserError, user_errors_exit
from pneumollm.utils.console import make_console, say


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pneumollm-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a run folder (fold<k>/), an arm folder (fold*/) or an export")
    parser.add_argument("inputs", nargs="+", help="films, folders of films, or a manifest CSV")
    parser.add_argument("--out", type=Path, required=True,
                        help="the CSV to write (path,prob,logit,pred,status,reason,shift,...)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config settings for every fold, e.g. model.llm.name_or_path=/models/llama-7b or "
                             "data.lungs.weights=/models/unet.pt (where files live elsewhere than at training)")
    parser.add_argument("--explain", type=Path, default=None, metavar="DIR",
                        help="also write an attribution map per film into DIR (film, lung crop, heat map)")
    parser.add_argument("--explain-method", default="occlusion", choices=["occlusion", "integrated_gradients"])
    parser.add_argument("--no-fold-adapters", action="store_true", help="keep adapters unfolded (slower)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with user_errors_exit():
        return predict(args)


MAX_SKIPPED_SHOWN = 10  # skipped rows listed on the console; the CSV has them all


def _say_skipped(films: list, out: Path, console) -> None:
    skipped = [f for f in films if f.status == "skipped"]
    for film in skipped[:MAX_SKIPPED_SHOWN]:
        say(f"  skipped {film.name}: {film.reason}", console)
    if len(skipped) > MAX_SKIPPED_SHOWN:
        say(f"  ... and {len(skipped) - MAX_SKIPPED_SHOWN} more skipped (see {out})", console)


def predict(args: argparse.Namespace) -> int:
    """Load the model, prepare the films as in training, predict, write the CSV (and the explanations)."""
    import numpy as np

    from pneumollm.inference.inputs import gather_inputs, prepare_inputs, write_rows
    from pneumollm.inference.models import load_trained
    from pneumollm.inference.predict import FIRST_COLUMNS, fold_scores, pick_device, prediction_rows
    from pneumollm.inference.shift import NO_PROFILE, mark_shift, shift_summary

    console = make_console()
    device = pick_device(args.device)
    gathered = gather_inputs(args.inputs)
    films = gathered.films
    for note in gathered.notes:
        say(f"[yellow]note[/yellow]: {note}", console)
    if not any(f.status == "pending" for f in films):  # nothing to load the model for
        write_rows(args.out, [{"path": f.name, "status": f.status, "reason": f.reason, "shift": "", **f.extra}
                              for f in films], FIRST_COLUMNS)
        _say_skipped(films, args.out, console)
        raise UserError(f"no film to predict among the {len(films)} input(s) (reasons above and in {args.out})")
    model = load_trained(args.model, device, args.set, fold_adapters=not args.no_fold_adapters)
    say(f"model: {model.arm}, {len(model.folds)} fold model(s) from {model.source} on {device}; threshold "
        f"{model.threshold:.3f}", console)
    for note in sorted({n for f in model.folds for n in f.notes}):
        say(f"  {note}", console)
    prepare_inputs(films, model.settings, progress=not args.no_progress)
    ready = [f for f in films if f.status == "ok"]
    images = np.stack([f.image for f in ready]) if ready else np.zeros((0, 1, 1), dtype=np.uint8)
    scores = fold_scores(model, images, args.batch_size, progress=not args.no_progress)
    flagged = mark_shift(films, model.profile)
    write_rows(args.out, prediction_rows(model, films, scores.probs, scores.outputs, scores.log_odds), FIRST_COLUMNS)
    skipped = len(films) - len(ready)
    say(f"{len(ready)} films predicted, {skipped} skipped -> {args.out}", console)
    _say_skipped(films, args.out, console)
    if not ready:
        raise UserError(f"none of the {len(films)} input(s) could be predicted (reasons above and in {args.out})")
    say(shift_summary(flagged, len(ready)) if model.profile is not None else f"[yellow]note[/yellow]: {NO_PROFILE}",
        console)
    if args.explain and ready:
        from pneumollm.inference.explain_films import explain_films

        written = explain_films(model, ready, scores.probs.mean(axis=1), args.explain, method=args.explain_method,
                                progress=not args.no_progress)
        say(f"{len(written)} explanations -> {args.explain}", console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
