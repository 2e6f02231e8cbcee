# PneumoLLM suite. `make demo` and `make test` set everything up on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs

# Offline by default: no hub lookups (real weights come from local folders) and W&B runs written locally.
# W&B prints nothing unless logger.wandb.verbose=true (the console scripts see to it).
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

# Paper tables and figures: `make table6 [SIZE=full] [DATA=/path/manifest.csv] [ARGS="trainer.max_epochs=50"]`.
SIZE ?= tiny
DATA ?=
ARGS ?=
# BY=site also splits the tables by one of the cohort's own manifest columns (by_site.md/csv)
BY ?=
RESULTS ?= results
TABLES := table2 table3 table4 table5 table6 fig6a fig6b
# Studies beyond the paper, run the same way (not part of `make paper`): docs/backbones.md
STUDIES := backbones
DATA_ARGS = $(if $(DATA),data=manifest data.source.manifest=$(abspath $(DATA)),)
# TASK=multiclass: ILO stages instead of the binary diagnosis (docs/staging.md); TASK=multilabel needs
# ARGS="data.label_columns=[...]" and a cohort of your own. The demo's stages come with its films.
TASK ?=
TASK_ARGS = $(if $(TASK),data.task=$(TASK),)
DEMO_STUDY = $(OUT)/demo/demo$(if $(filter-out binary,$(TASK)),-$(TASK),)

.PHONY: install demo test test-all lint format clean help paper sync external wheelhouse $(TABLES) $(STUDIES)

help:
	@echo "make demo      five-fold cross-validation of the tiny PneumoLLM on the embedded demo cohort (CPU)"
	@echo "               TASK=multiclass: the staged (ILO 0-3) table instead of the binary one"
	@echo "make test      the fast test suite (make test-all adds slow and ../shared tests)"
	@echo "make table6    one paper table or figure (table2..table6, fig6a, fig6b); make paper runs them all"
	@echo "               SIZE=full (paper models, GPU), DATA=manifest.csv (your cohort), ARGS='key=value ...'"
	@echo "               TASK=multiclass|multilabel (staged or co-finding labels; docs/staging.md)"
	@echo "make backbones PneumoLLM with other LLM trunks and vision encoders (beyond the paper; same options)"
	@echo "make external  every arm of a finished table on an external cohort: make external TABLE=table6 DATA=x.csv"
	@echo "make sync      upload the offline W&B runs of a table: make sync TABLE=table6 (no TABLE: the demo)"
	@echo "make install   create $(VENV) with the suite installed (done automatically by the others)"
	@echo "make wheelhouse the wheels an offline machine lacks: HAVE=have.txt (its pip freeze) WHEEL_PYTHON=3.12"
	@echo "make lint      ruff"

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

# A sweep whose jobs failed still gets its table of the finished arms; make then exits with the sweep's status.
demo: install
	status=0; $(BIN)/pneumollm-train --config-dir experiments --config-name demo -m $(TASK_ARGS) || status=$$?; \
	$(BIN)/pneumollm-aggregate $(DEMO_STUDY) --num-folds 5 || status=$$?; exit $$status

$(TABLES) $(STUDIES): install
	status=0; $(BIN)/pneumollm-train --config-dir experiments --config-name $@ -m size=$(SIZE) \
	    paths.results_dir=$(RESULTS) $(DATA_ARGS) $(TASK_ARGS) $(ARGS) || status=$$?; \
	$(BIN)/pneumollm-aggregate $(RESULTS)/$@ --table $@ --partial $(if $(BY),--by $(BY),) || status=$$?; exit $$status

paper: $(TABLES)

# Every arm of a finished table on an external cohort: make external TABLE=table6 DATA=/data/other_hospital.csv
external: install
	@test -n "$(TABLE)" -a -n "$(DATA)" || { echo "usage: make external TABLE=table6 DATA=/path/manifest.csv"; exit 2; }
	$(BIN)/pneumollm-external $(RESULTS)/$(TABLE) $(abspath $(DATA))

# Upload the offline W&B runs of a table (every arm, fold and cohort, and the aggregate runs): make sync TABLE=table6
TABLE ?=
sync: install
	$(BIN)/pneumollm-wandb-sync $(if $(TABLE),$(RESULTS)/$(TABLE),$(OUT)/demo)

# Wheels for an offline machine (docs/weights.md, "An offline GPU server"): only what its `pip freeze` (HAVE)
# lacks, for its Python (WHEEL_PYTHON); without HAVE, a typical PyTorch GPU machine's stack is assumed present.
WHEELHOUSE ?= wheelhouse
HAVE ?=
WHEEL_PYTHON ?= 3.12
WHEEL_EXTRAS ?=
wheelhouse:
	$(PYTHON) tools/wheelhouse.py download $(WHEELHOUSE) --python-version $(WHEEL_PYTHON) \
	    $(if $(HAVE),--have $(HAVE),) $(if $(WHEEL_EXTRAS),--extras $(WHEEL_EXTRAS),)

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "not gpu"

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(OUT)/demo data/demo
