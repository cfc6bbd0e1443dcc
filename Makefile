# The two set-up commands of the README: `make demo` (train the demo pipelines end to end) and `make test`.
# Both create the virtual environment in .venv on first use, with the versions pinned in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1

.PHONY: demo espeak-ng test test-quick bench clean-stores

$(BIN)/lstmflow: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,team]"
	touch $@

DEMO_PIPELINES := sunspots co2 order digits agents chirps shapes pydocs numbers spoken

demo: $(BIN)/lstmflow espeak-ng  ## train, evaluate and register every demo pipeline (local Prefect, MLflow, DVC stores)
	$(BIN)/lstmflow run $(DEMO_PIPELINES)

# The speech demo's clips are synthesised with espeak-ng (lstmflow/data/demo.py): installed from Debian when missing,
# as root with apt-get; otherwise the demo stops here and says what to install.
espeak-ng:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	  else \
	    echo "espeak-ng is missing and this is not root with apt-get: install it (sudo apt-get install espeak-ng)," \
	      "the demo data's speech clips are synthesised with it" >&2; exit 1; \
	  fi; }

test: $(BIN)/lstmflow  ## the whole suite but GPU tests (what CI runs)
	$(BIN)/python -m pytest -m "not gpu" -n 2 --dist loadfile

test-quick: $(BIN)/lstmflow  ## the fast loop: no slow and no GPU tests
	$(BIN)/python -m pytest -m "not slow and not gpu" -n 2 --dist loadfile

bench: $(BIN)/lstmflow  ## every benchmark; each prints its table and appends it to benchmarks/RESULTS.md
	$(BIN)/python benchmarks/ingest.py  # windowing, padding, audio features, tokenization
	$(BIN)/python benchmarks/pipeline_overhead.py
	$(BIN)/python benchmarks/lstm_train.py --busy  # Keras/TF from KERAS_PYTHON (default /tmp/kerasvenv) if present
	$(BIN)/python benchmarks/trainer_overhead.py
	$(BIN)/python benchmarks/search.py
	$(BIN)/python benchmarks/scaling.py

clean-stores:  ## forget every run: MLflow, Prefect, DVC cache and remote, features, training runs
	rm -rf mlflow.db mlruns .prefect .dvc-storage .dvc/cache features runs data/raw
