# Two commands do all the set-up on a fresh machine:
#   make repro   create .venv, install the project, run the whole study (dvc repro)
#   make test    create .venv, install the project, run the test suite
# Both install only when pyproject.toml changed since the last install.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install repro test test-fast status clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# DVC runs each stage's `python -m pipeline <stage>` through PATH, so the venv goes first.
# pipeline.warm keeps torch, torchvision and MLflow imported in a server the stages fork from (~4 s less
# per stage; plain `dvc repro` works too). One key groups this run's stages under one MLflow parent;
# pipeline.track then links the stages DVC skipped as cached, so even a no-op repro shows the whole study
# in `mlflow ui`.
repro: $(STAMP)
	@key=$$($(BIN)/python -c 'import uuid; print(uuid.uuid4().hex)'); \
	export PATH="$(CURDIR)/$(BIN):$$PATH" SR4IR_PIPELINE_RUN=$$key SR4IR_PIPELINE_START=$$(date +%s.%N); \
	$(BIN)/python -m pipeline.warm $(BIN)/dvc repro && $(BIN)/python -m pipeline.track

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-fast: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

status: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc status

clean-venv:
	rm -rf $(VENV)
