# Two commands do everything on a fresh machine (see README):
#   make demo   - set up .venv, fetch the sample head, de-identify it, write before/after renderings
#   make test   - set up .venv and run the test suite (CI runs exactly this via .ci/run)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build on these machines (a wheel that is already on disk); set TORCH_SPEC to your CUDA build elsewhere.
TORCH_SPEC ?= torch==2.13.0
# trame-slicer[standalone] pins slicer-core<5.12 and vtk 9.6: real MRML scene + offscreen views for the Slicer tests.
SLICER_SPEC ?= trame-slicer[standalone]==2.0.0
DEMO_OUT ?= out/demo

.PHONY: demo test bench setup clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[audit,test]" "$(SLICER_SPEC)"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/cpmae demo --out $(DEMO_OUT)

test: $(VENV)/.installed
	$(VENV)/bin/cpmae fetch-samples
	$(PY) -m pytest Testing -q

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
