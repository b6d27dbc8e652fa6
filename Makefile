# `make demo` and `make test` do all set-up on a fresh Debian machine (as root).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup system venv demo test lint bench image wheel clean

setup: system venv

system:
	@scripts/install-system-packages.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m podnet demo $(if $(KEEP),--keep)

test: setup
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy

# podnet's wheel (dist/), what `pip install` takes on a node (docs/deploy.md).
wheel: venv
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .

# podnet's OCI image from Debian's archive, into podman (kept while the source is unchanged).
image: setup
	scripts/build-image.sh

bench: setup
	$(PY) bench/cni_latency.py
	$(PY) bench/cni_latency.py --phases
	$(PY) bench/pod_churn.py
	$(PY) bench/pod_churn.py --parallel 32
	$(PY) bench/control_plane.py --peers 100 1000 5000 20000
	$(PY) bench/overlay_paths.py
	$(PY) bench/overlay_paths.py --link-gbit 3
	$(PY) bench/netpol.py
	$(PY) bench/dataplane.py
	$(PY) bench/dataplane.py --link-gbit 0
	$(PY) bench/dataplane.py --fast-path off

clean:
	rm -rf $(VENV) build dist *.egg-info
