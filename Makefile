# The two set-up commands of the README: `make demo` and `make test`.
# Both create (or reuse) .venv and install what they need on a fresh machine with Python 3.11.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP  := $(VENV)/.kaleido-installed
DEMO   ?= runs/demo

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, at the versions this machine holds on disk (no big download).
	$(PIP) "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) -e ".[test]"
	# pysodmetrics is only the reference the metric tests compare against; its pins
	# (opencv-python-headless<5, numpy<2.3.5) clash with ours, so its own deps are listed in [test].
	$(PIP) --no-deps "pysodmetrics==1.6.2"
	touch $(STAMP)

demo: $(STAMP)
	@echo "== kaleido demo on the bundled sample (data/sample): the stages that exist so far =="
	$(VENV)/bin/kaleido data inspect data/sample --json $(DEMO)/inspect.json
	$(VENV)/bin/kaleido data split data/sample --out $(DEMO)/split
	@echo "== done: catalog report in $(DEMO)/inspect.json, train/val/test split in $(DEMO)/split =="

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
