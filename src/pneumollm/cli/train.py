"""``pneumollm-train``: the Hydra app that trains and tests one fold (``-m`` sweeps folds and arms).

User errors (a bad cohort, missing weights, a wrong setting) end a single run with one line ``error: ...``
and exit status 2; a sweep records failed jobs, goes on, lists them at the end and exits with status 1.
Ctrl-C ends with one line saying where the run stopped, and exit status 130.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from pneumollm.config import register_resolvers
from pneumollm.errors import INTERRUPT_EXIT_CODE, user_errors_exit
from pneumollm.paths import conf_dir
from pneumollm.training import sweep_report
from pneumollm.utils.quiet import one_console_copy_of_lightning, quiet_third_party_noise

register_resolvers()
quiet_third_party_noise()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def app(cfg: DictConfig) -> None:
    """Train and test the fold ``data.fold`` of the configured arm; results go to the Hydra run directory."""
    from pneumollm.training.run import run_fold  # torch and Lightning load here, so --help and --cfg stay quick

    one_console_copy_of_lightning()
    with user_errors_exit():
        run_fold(cfg)


def main() -> None:
    """Console entry point: the Hydra app, then a non-zero exit status when jobs of a sweep failed."""
    sweep_report.LAST_SWEEP_FAILURES.clear()
    try:
        app()
    except KeyboardInterrupt as err:  # Interrupted (during training) says where; elsewhere a plain Ctrl-C
        print(str(err) or "interrupted; run the same command again to resume", file=sys.stderr, flush=True)
        sys.exit(INTERRUPT_EXIT_CODE)
    if sweep_report.LAST_SWEEP_FAILURES:
        sys.exit(1)


if __name__ == "__main__":
    main()
