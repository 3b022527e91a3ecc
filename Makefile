# The two entry points of the README: `make demo` and `make test`.
# Both create .venv when missing and install only when a requirements file changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo

.PHONY: demo test lint install install-test install-preflight lock

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: requirements.txt constraints.txt pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.test-installed: requirements-test.txt constraints.txt $(VENV)/.runtime-installed $(VENV)/.preflight-installed
	$(PY) -m pip install --quiet -c constraints.txt -r requirements-test.txt
	touch $@

# The TPU and GPU compilers of `irl_lm.preflight`, in a folder only it puts on its path.
$(VENV)/.preflight-installed: requirements-preflight.txt | $(PY)
	rm -rf $(VENV)/compilers
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/compilers -r requirements-preflight.txt
	touch $@

install: $(VENV)/.runtime-installed
install-test: $(VENV)/.test-installed
install-preflight: $(VENV)/.runtime-installed $(VENV)/.preflight-installed

demo: install
	$(PY) -m irl_lm.demo --workdir=$(WORKDIR)

lint: install-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The suite runs in TEST_WORKERS processes (pytest-xdist; 0: in this one), tests handed out
# in file order and taken over by an idle worker at the end.
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=25 tests

# Regenerates constraints.txt from a fresh resolution of both requirements files.
lock:
	rm -rf /tmp/irl-lm-lock && $(PYTHON) -m venv /tmp/irl-lm-lock
	/tmp/irl-lm-lock/bin/pip install --quiet -r requirements.txt -r requirements-test.txt
	(echo "# Pinned versions that make demo / make test install (pip -c). Regenerate: make lock."; \
	 /tmp/irl-lm-lock/bin/pip freeze --exclude-editable | sort) > constraints.txt
