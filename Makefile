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

.PHONY: demo test bench setup clean-venv system-deps

# Debian packages the tests need: an X server for the Slicer panel test (Testing/panel) and the
# X libraries PySide6's xcb platform plugin loads. Installed only when one is missing (idempotent).
SYSTEM_PACKAGES := xvfb xauth libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 \
	libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxcb-sync1 libxcb-shm0 \
	libxrender1 libfontconfig1 libdbus-1-3 libegl1 libgl1

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[audit,test]" "$(SLICER_SPEC)"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/cpmae demo --out $(DEMO_OUT)

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
		grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the tests: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: $(VENV)/.installed system-deps
	$(VENV)/bin/cpmae fetch-samples
	$(PY) -m pytest Testing -q

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
