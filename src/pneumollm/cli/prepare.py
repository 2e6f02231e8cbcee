"""``pneumollm-prepare``: preprocess a cohort into the film cache, make its folds, optionally a QC sheet."""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from pneumollm.config import register_resolvers
from pneumollm.data.datamodule import CohortDataModule
from pneumollm.data.qc_sheets import write_cohort_qc
from pneumollm.errors import user_errors_exit
from pneumollm.paths import conf_dir
from pneumollm.utils.console import say

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="prepare")
def main(cfg: DictConfig) -> None:
    """Prepare the configured cohort; prints counts and where the cohort, report, folds and QC sheets are."""
    with user_errors_exit():
        datamodule: CohortDataModule = instantiate(cfg.data, _convert_="object")
        datamodule.prepare_data()
    say(f"cohort index: {datamodule.cohort_folder / 'cohort.csv'}")
    say(f"folds: {datamodule.folds_path}")
    if cfg.qc:
        sheets = write_cohort_qc(datamodule.cohort, max_films=int(cfg.qc_max_films), columns=int(cfg.qc_columns))
        for sheet in sheets:
            say(f"QC sheet: {sheet}")


if __name__ == "__main__":
    main()
