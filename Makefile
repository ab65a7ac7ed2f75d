# Set-up and entry points. `make repro` and `make test` create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(BIN):$(PATH)

# CPU quick profile: the whole pipeline with real pretrained weights on a 2-core CPU in < 20 min
# (a small backbone, frozen with cached features, per-class caps on training images; evaluation
# on every test and val image; export's ONNX parity check on 2000 evenly spread test images).
# `dvc exp run -S` writes its overrides into params.yaml (and DVC rewrites the file's layout): the
# recipe restores the committed file afterwards, even when the run fails or is interrupted, so
# `make test` after `make quick` sees the defaults; the overrides live on in the experiment
# (`dvc exp show`). A previous experiment of the same name on this commit is replaced; no `-f`,
# which would also force every stage to re-run: only stages whose inputs changed re-run.
# Add more -S overrides with QUICK_EXTRA, e.g. QUICK_EXTRA="-S train.weights=random".
QUICK_NAME ?= cpu-quick
PROFILE_BACKUP := .dvc/tmp/params-before-profile.yaml
CPU_SMALL := -S 'train.backbones=[tf_mobilenetv3_small_100]' -S 'train.freeze_modes=[frozen]' \
	-S train.device=cpu -S export.parity_max_images=2000
QUICK := $(CPU_SMALL) -S train.max_per_class.train=1000 -S train.max_per_class.val=500 $(QUICK_EXTRA)
# CPU full-data profile: every training image (DS1) and every test image (DS2), frozen backbone
# features computed once into the shared feature store, one fused image+RR head per patient fold
# (batch 256: a head on cached features is a few small matrix products per batch). Then
# `make ablation` trains image-only and rr-only heads on the same features for the comparison.
FULL_NAME ?= cpu-full
FULL := $(CPU_SMALL) -S train.batch_size=256 $(FULL_EXTRA)

.PHONY: setup repro quick cpu-full ablation image-kinds profile test lint bench mutation

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

repro: $(STAMP)
	dvc repro

quick: $(STAMP)
	$(MAKE) --no-print-directory profile PROFILE_NAME=$(QUICK_NAME) PROFILE_ARGS="$(QUICK)"

cpu-full: $(STAMP)
	$(MAKE) --no-print-directory profile PROFILE_NAME=$(FULL_NAME) PROFILE_ARGS="$(FULL)"

ablation: $(STAMP)
	python -m bench.bench_ablation --backbone tf_mobilenetv3_small_100 --batch-size 256 --device cpu

# spectrogram.image grey / multires / two_lead on out-of-fold DS1 validation (never the test
# split), after the data stages; the table says which default to choose
image-kinds: $(STAMP)
	python -m bench.bench_image_kinds --backbone tf_mobilenetv3_small_100 --batch-size 256 --device cpu

# One named `dvc exp run` with the committed params.yaml restored afterwards (see above).
profile:
	mkdir -p $(dir $(PROFILE_BACKUP)) && cp params.yaml $(PROFILE_BACKUP)
	trap 'cp $(PROFILE_BACKUP) params.yaml && rm -f $(PROFILE_BACKUP)' EXIT; trap 'exit 130' INT TERM; \
	head=$$(git rev-parse HEAD); ref=refs/exps/$$(echo $$head | cut -c1-2)/$$(echo $$head | cut -c3-)/$(PROFILE_NAME); \
	if git show-ref -q --verify $$ref; then dvc exp remove -q $$ref; fi; \
	dvc exp run -n $(PROFILE_NAME) $(PROFILE_ARGS)

test: $(STAMP)
	pytest -n 2 --dist loadfile

lint: $(STAMP)
	ruff check data_prep pipeline tests bench
	mypy data_prep pipeline

bench: $(STAMP)
	python -m bench.bench_spectrogram
	python -m bench.bench_feature_cache
	python -m bench.bench_memory_format

# Mutation score of the cores that decide results, each against its own unit tests
# (bench/mutation.py; not in CI). CORE="rhythm fusion" runs some cores only.
mutation: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[mutation]'
	python -m bench.mutation $(if $(CORE),--core $(CORE))
