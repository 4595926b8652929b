# make test  — set up everything the tests need (venv, Azurite, checkov), then lint, type-check, test
# make demo  — set up and run the end-to-end demo on the local sandbox
# make flake-check RUNS=10 HOG=1 — the whole suite RUNS times from a fresh clone (HOG CPU
#              hogs beside it); prints "N passed, M failed" and the seeds of failures
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
NODE_STAMP := node_modules/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: test lint typecheck unit infra-check doctor demo clean setup flake-check

test: setup lint typecheck doctor unit infra-check

# The three installs wait on the network, not the CPU: run them side by side.
setup:
	@$(MAKE) --no-print-directory -j3 $(STAMP) $(NODE_STAMP) $(CHECKOV_STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# Azurite (the Storage emulator) comes from the committed package-lock.json.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# checkov pins an older pycep-parser, so it lives in a venv of its own.
$(CHECKOV_STAMP): infra/checkov-requirements.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q -r infra/checkov-requirements.txt
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict cmk function_app.py

# Offline checks of the Functions app (host.json, function_app.py, requirements, packaging).
# The doctor reads every file under --path: it gets a copy of the app without the venvs,
# node_modules and caches beside it (they hold nothing it checks; 50 s -> 10 s).
DOCTOR_SKIP := .git .venv .venv-checkov .venv-azcli .node-azsdk node_modules .mypy_cache \
	.ruff_cache .pytest_cache .hypothesis __pycache__ '*.egg-info' .sandbox
doctor: $(STAMP)
	@stage=$$(mktemp -d) && trap 'rm -rf "$$stage"' EXIT && \
	tar -c $(addprefix --exclude=,$(DOCTOR_SKIP)) . | tar -x -C "$$stage" && \
	echo "$(BIN)/azure-functions-doctor doctor --path <copy of .> --profile full" && \
	$(BIN)/azure-functions-doctor doctor --path "$$stage" --profile full

# The suite waits on the network and on (compressed) Azure timings more than it computes:
# three workers on two cores take ~110 s instead of ~250 s. A test file runs in one worker
# (--dist loadfile: the chaos run is one module-scoped fixture). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 3
unit: setup
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

infra-check: $(CHECKOV_STAMP) $(STAMP)
	$(BIN)/python infra/checkov_gate.py --checkov $(CHECKOV_VENV)/bin/checkov infra

demo: setup
	$(BIN)/cmk demo

# Not part of `test`: minutes per run. Clones HEAD (commit first), sets it up, runs pytest.
RUNS ?= 10
HOG ?= 0
flake-check:
	$(PYTHON) scripts/flake_check.py --runs $(RUNS) --hog $(HOG)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache

# The unmodified az CLI against `cmk sandbox up` (tests/sandbox/test_azure_cli.py): the
# latest azure-cli from PyPI in a venv of its own, kept between runs (delete
# .venv-azcli/.installed to fetch a newer one). Minutes to install, so not part of `test`.
AZCLI_VENV := .venv-azcli
AZCLI_STAMP := $(AZCLI_VENV)/.installed
.PHONY: az-cli-check

$(AZCLI_STAMP):
	test -x $(AZCLI_VENV)/bin/python || $(PYTHON) -m venv $(AZCLI_VENV)
	$(AZCLI_VENV)/bin/python -m pip install -q --upgrade pip
	$(AZCLI_VENV)/bin/python -m pip install -q --upgrade azure-cli
	touch $@

az-cli-check: $(AZCLI_STAMP) $(STAMP)
	CMK_AZ_CLI=$(abspath $(AZCLI_VENV))/bin/az $(BIN)/pytest tests/sandbox/test_azure_cli.py \
	  "tests/sandbox/test_platform_command_app.py::TestSandboxUpApp::test_az_keyvault_key_rotate_moves_every_bound_account" \
	  -q -p no:cacheprovider

# The Azure SDK for JavaScript against `cmk sandbox up` (tests/sandbox/test_node_sdk.py):
# the latest packages from npm in a folder of their own (delete .node-azsdk/.installed to
# fetch newer ones). `clients-check` runs both foreign-client checks.
NODE_SDK_DIR := .node-azsdk
NODE_SDK_STAMP := $(NODE_SDK_DIR)/.installed
.PHONY: node-sdk-check clients-check

$(NODE_SDK_STAMP):
	mkdir -p $(NODE_SDK_DIR)
	test -f $(NODE_SDK_DIR)/package.json || echo '{"name": "cmk-node-sdk-check", "private": true}' > $(NODE_SDK_DIR)/package.json
	cd $(NODE_SDK_DIR) && npm install --no-audit --no-fund --loglevel=error @azure/identity @azure/keyvault-keys @azure/arm-resources-subscriptions
	touch $@

node-sdk-check: $(NODE_SDK_STAMP) $(STAMP)
	CMK_NODE_SDK=$(abspath $(NODE_SDK_DIR)) $(BIN)/pytest tests/sandbox/test_node_sdk.py -q -p no:cacheprovider

clients-check: az-cli-check node-sdk-check
