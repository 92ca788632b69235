# One command surface, used the same way locally and by .ci/run.
# `make run` and `make test` work as the first command on a fresh machine: both
# build .venv when it is missing or older than pyproject.toml or requirements.lock.
# requirements.lock pins every resolved version (`make lock` regenerates it): install
# uses it as constraints, so two machines run the same code.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
EXTRAS := all,test,bench
PYTEST_ARGS ?=

.PHONY: install lock pythons run test lint format bench soak container clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	@touch $(STAMP)

# Resolve the newest versions pyproject.toml allows in a scratch venv and pin them all.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[$(EXTRAS)]'
	{ echo "# Every resolved version, for \`make install\` (pip -c). Regenerate: make lock"; \
	  echo "# Resolved on Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())')."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable; } > $(LOCK)
	rm -rf .venv-lock

# Build the package and import it on every other supported Python found here.
pythons:
	.ci/pythons

run: install
	$(BIN)/campaign-writer run --config config/local.toml --with-simulator

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: install
	$(BIN)/campaign-writer bench --quick

soak: install
	$(BIN)/python -m pytest tests/reliability --soak -p no:randomly

# Builds the image where a container engine answers (the suite checks the Containerfile
# statically and with hadolint, since CI machines have no engine).
container:
	@engine=$$(command -v docker || command -v podman) || { echo "no docker or podman installed"; exit 2; }; \
	$$engine info >/dev/null 2>&1 || { echo "$$engine info: no container engine answers here"; exit 2; }; \
	$$engine build -f deploy/container/Containerfile -t campaign-writer:local .

clean:
	rm -rf $(VENV) .venv-lock build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
