# Two entry points (see README.md):
#   make demo   set up from nothing (the plain install: vbmd-rt with ONNX Runtime on the CPU, no extra) and
#               run the main job on a bundled example
#   make test   set up from nothing (with the dev, itk (ITK's Scanco reader, a test oracle), train, cluster,
#               eval and rtx (TensorRT-RTX) extras) and run the tests (the default suite, about 5 minutes on two
#               cores)
#   make test-slow   the long tests (-m slow: the other generators' hands and the bench's hard cases, the
#               bench report, a full-size phantom, the 200-scan watch stream, a killed Dask worker, training's
#               determinism, the five-level 3D U-Net's export, mypy, the README's tour); CI runs them after
#               `make test`
# Every install takes its exact versions from constraints.txt.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev,itk,train,cluster,eval,rtx
# base: no extra at all (pip install -e .), what a plain `pip install vbmd-rt` gives.
DEMO_EXTRAS ?= base
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check

$(VENV)/.installed-%: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip==25.3
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e ".$(if $(filter base,$*),,[$*])"
	touch $@

.PHONY: setup demo-setup test test-slow demo bench lint typecheck clean
setup: $(VENV)/.installed-$(EXTRAS)
demo-setup: $(VENV)/.installed-$(DEMO_EXTRAS)

test: setup
	$(PY) -m pytest -q -n auto --dist loadscope --no-loadscope-reorder

test-slow: setup
	$(PY) -m pytest -q -n auto --dist loadscope --no-loadscope-reorder -m "slow and not gpu"

demo: demo-setup
	$(VENV)/bin/vbmd-rt synth demo-out/scans --cases 1 --size small --seed 7
	$(VENV)/bin/vbmd-rt run demo-out/scans/PHANTOM_0000.AIM -o demo-out/results --report html --overwrite
	@$(PY) -c 'import json; r = json.load(open("demo-out/results/PHANTOM_0000.json")); t = json.load(open("demo-out/scans/PHANTOM_0000.truth.json")); print("D100 measured %.1f mg HA/cm3 (qc %s), true %.1f mg HA/cm3 (the phantom'"'"'s truth)" % (r["d100_mg_ha_cm3"], r["qc"]["status"], t["d100_mg_ha_cm3"]))'

bench: setup
	$(VENV)/bin/vbmd-rt bench --size full --runs 5 -o bench.json

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis .mypy_cache
