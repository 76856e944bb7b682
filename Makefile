# sft — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PLATFORM := $(VENV)/bin/sft-platform
DATA_DIR ?= $(CURDIR)/.sft-data
LISTEN ?= 127.0.0.1:8443
# Test parallelism: end-to-end tests start real servers; two workers fit 2 cores.
PYTEST_WORKERS ?= 2

.PHONY: install deps run test check proto proto-check lint typecheck layers unit bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# compat: a plain path .pth, which starts ~20 ms faster than the import-hook kind, and
	# `sft ssh` pays start-up on every connection. Plain -e where setuptools dropped compat.
	$(VENV)/bin/pip install -q -e '.[platform,dev]' --config-settings editable_mode=compat 2>/dev/null \
	  || $(VENV)/bin/pip install -q -e '.[platform,dev]'
	touch $@

# sslyze pins an older cryptography than sft needs, so it lives in a venv of its own;
# the broker's TLS tests run its CLI from there (SFT_SSLYZE overrides the path).
SSLYZE_VENV := .venv-sslyze
$(SSLYZE_VENV)/.installed:
	$(PYTHON) -m venv $(SSLYZE_VENV)
	$(SSLYZE_VENV)/bin/pip install -q 'sslyze>=6.1,<7'
	touch $@

## install: create .venv with sft and its development tools
install: $(VENV)/.installed

## deps: install the real software the tests run (apt, as root)
deps: $(SSLYZE_VENV)/.installed
	bash tools/install-system-deps.sh

## run: migrate, bootstrap a demo team and serve the platform on $(LISTEN)
run: install
	@if [ -f "$(DATA_DIR)/platform.db" ]; then \
	  echo "Reusing the data dir $(DATA_DIR) (delete it to start from scratch)."; \
	else \
	  echo "Creating a new platform in $(DATA_DIR)."; \
	fi
	@$(PLATFORM) migrate --data-dir "$(DATA_DIR)" --log-level warning
	@SFT_PLATFORM_LISTEN="$(LISTEN)" $(PLATFORM) init --team demo --admin demo-admin --existing-ok --data-dir "$(DATA_DIR)" \
	  --log-level warning
	@echo "Next: paste the 'sft enroll' line above in another terminal. Ctrl-C stops the platform."
	@exec $(PLATFORM) serve --data-dir "$(DATA_DIR)" --listen "$(LISTEN)"

## test: everything CI runs — contracts, lint, layering, types, unit and end-to-end tests
test: install deps check
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q

## check: static checks (fast)
check: proto-check lint layers typecheck

## proto: regenerate Python code and typing stubs from proto/
proto: install
	bash proto/generate.sh

## proto-check: fail when generated code is stale or the contracts do not lint
proto-check: install
	bash proto/generate.sh
	@git diff --exit-code --stat -- sft/ || { \
	  echo "generated code in sft/ is stale: run 'make proto' and commit the result" >&2; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- sft/)" || { \
	  echo "make proto created files that are not committed: commit sft/" >&2; exit 1; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

layers: install
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy runtime services agent client bench tests

## bench: run the benchmarks; prints a table and writes bench/results/latest.json
bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(SSLYZE_VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
