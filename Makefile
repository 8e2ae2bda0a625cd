# The two set-up commands of the README: `make demo` and `make test`.
# Both create (or reuse) .venv and install what they need on a fresh machine with Python 3.11.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP  := $(VENV)/.kaleido-installed
DEMO   ?= runs/demo-app
CATALOG ?= data/sample
MODEL  ?= kaleido-fashion-v4
DEMO_ADDRESS ?= 127.0.0.1
DEMO_PORT ?= 8501
STAGES ?= runs/stages
K      := $(VENV)/bin/kaleido
DEMO_IMAGES := data/sample/images/10047.jpg data/sample/images/10117.jpg data/sample/images/17137.jpg

.PHONY: demo stages test install lock clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, at the versions this machine holds on disk (no big download);
	# every package at the exact version of constraints.txt (the versions the measurements used).
	$(PIP) -c constraints.txt "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) -c constraints.txt -e ".[test]"
	# pysodmetrics is only the reference the metric tests compare against; its pins
	# (opencv-python-headless<5, numpy<2.3.5) clash with ours, so its own deps are listed in [test].
	$(PIP) --no-deps "pysodmetrics==1.6.2"
	# METEOR and the PTB tokenizer of pycocoevalcap run on Java; install a JRE where we can.
	command -v java >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null; } || \
		echo "no Java: caption metrics will report METEOR as unavailable"
	touch $(STAMP)

demo: $(STAMP)
	@echo "== kaleido demo: preparing $(CATALOG) with $(MODEL) (first start only; progress below) =="
	$(K) demo prepare --catalog $(CATALOG) --model $(MODEL) --out $(DEMO)
	@echo "== serving the app: open the URL below (Ctrl-C stops it) =="
	KALEIDO_DEMO_RUN=$(DEMO) KALEIDO_TAG_FOLDERS=$(CATALOG) $(PY) -m streamlit run app/streamlit_app.py \
		--server.address $(DEMO_ADDRESS) --server.port $(DEMO_PORT)

# Every pipeline stage on the bundled sample at a demo budget (`kaleido pipeline --config demo`),
# then the pictures of each stage in $(STAGES)/; not a set-up command.
stages: $(STAMP)
	$(K) pipeline --catalog data/sample --out $(STAGES) --config demo
	$(K) saliency predict $(DEMO_IMAGES) --out $(STAGES)/saliency
	$(K) patches show $(DEMO_IMAGES) --out $(STAGES)/patches
	$(K) sat caption $(DEMO_IMAGES) --model $(STAGES)/sat --out $(STAGES)/sat/pictures
	$(K) align show 10047 --catalog data/sample --cache $(STAGES)/cache --out $(STAGES)/align_10047.png

test: $(STAMP)
	$(PY) -m pytest -q

# Pin what .venv holds now (after a dependency change in pyproject.toml and a `make install`).
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) runs
