# vagent: `make run` installs and starts it, `make test` runs the test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3
DEB_PACKAGES := redis-server espeak-ng rtpengine-daemon

.PHONY: install deb run test lint bench chaos clean

install: deb $(VENV)/.installed

# Debian packages the services need; installed only when missing.
deb:
	@missing=""; \
	for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(SYSTEM_PYTHON) -c "import ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Start the stack, then show it. `vagent up` exits 1 when degraded (no Asterisk
# configured yet, say): that is a working install, not a failed one.
run: install
	@$(VENV)/bin/vagent up; rc=$$?; [ $$rc -le 1 ] || exit $$rc
	@$(VENV)/bin/vagent status; true

# Most tests wait on processes and sockets, so they run three modules at a time; the
# ones that bound time or CPU (marker `serial`) then run alone on a quiet machine.
TEST_WORKERS ?= 3
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial"
	$(PY) -m pytest -m serial

lint: install
	$(VENV)/bin/ruff check .
	@mkdir -p .lint && ln -sfn "$(CURDIR)" .lint/vagent
	cd .lint && MYPYPATH=. ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p vagent.cli -p vagent.services

bench: install
	$(PY) bench/run.py

# The chaos soak (bounded: 100 faults or 15 minutes, loopback only): figures into
# docs/RELIABILITY.md, every turn in build/chaos-report.json; exits 1 on a missed target.
chaos: install
	$(PY) bench/chaos.py --calls 8 --faults 100 --seed 7 --max-minutes 15 \
		--report build/chaos-report.json --doc docs/RELIABILITY.md

clean:
	rm -rf $(VENV) .lint build *.egg-info
