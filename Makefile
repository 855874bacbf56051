# Two entry points (see README.md):
#   make demo   set up from nothing and run the main job on a bundled example
#   make test   set up from nothing and run the tests
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev,train,cluster,eval,rtx
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip==25.3
	$(PY) -m pip install $(PIP_FLAGS) -e ".[$(EXTRAS)]"
	touch $@

.PHONY: setup test demo bench lint clean
setup: $(VENV)/.installed-$(EXTRAS)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/vbmd-rt synth demo-out/scans --cases 1 --size small --seed 7
	$(VENV)/bin/vbmd-rt run demo-out/scans/PHANTOM_0000.AIM -o demo-out/results --report html --overwrite
	@echo "truth: $$(grep -o '"d100_mg_ha_cm3": [0-9.]*' demo-out/scans/PHANTOM_0000.truth.json)"

bench: setup
	$(PY) bench/bench_aim_io.py

lint: setup
	$(VENV)/bin/ruff check vbmd_rt runtime export calib bench scripts tests

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis
