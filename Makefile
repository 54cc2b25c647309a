# transferlab. `make repro` runs the pipeline, `make test` runs the tests; both create the
# virtual environment (.venv) first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
# The pipeline's stages call `python`: make it the environment's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup lock repro ci-repro plan test test-fast lint browser exp-sweep exp-show bench bench-overhead audit clean-venv

setup: $(VENV)/.installed

# requirements.lock pins every package (pip's constraints file): the same versions on every
# machine, so results are comparable. `make lock` regenerates it (see the README).
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $@

# Resolve the newest versions pyproject.toml allows in a scratch environment and pin them.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	{ echo "# Every package make setup installs, pinned: pip install -c requirements.lock -e '.[dev]'."; \
	  echo "# Regenerate with make lock (resolves the newest versions pyproject.toml allows)."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable; } > requirements.lock
	rm -rf .lock-venv

repro: setup
	@git rev-parse --verify -q HEAD >/dev/null || { \
	  echo "make repro: needs a git repository with at least one commit (DVC tracks runs by commit)"; exit 1; }
	$(BIN)/dvc repro
	@echo "Report: reports/report.md"

# Reproduce against a shared DVC remote, as CI does (.github/workflows/repro.yml): restore
# what any machine already computed (DVC's run cache), run only what is new, share it back,
# and write the comparison with BASE (a git revision) to results/ci/diff.md.
#   make ci-repro REMOTE=/mnt/shared/dvc-cache BASE=origin/main   (or s3://..., ssh://...)
# REMOTE is added as this clone's default remote in .dvc/config.local (not committed);
# without it, the remote configured in .dvc/config is used.
REMOTE ?=
BASE   ?= main
ci-repro: setup
	@git rev-parse --verify -q HEAD >/dev/null || { \
	  echo "make ci-repro: needs a git repository with at least one commit"; exit 1; }
	@if [ -n "$(REMOTE)" ]; then $(BIN)/dvc remote add --local --default --force ci '$(REMOTE)'; fi
	$(BIN)/dvc pull --run-cache --allow-missing
	$(BIN)/dvc repro --pull
	$(BIN)/dvc push --run-cache
	mkdir -p results/ci
	{ echo "## Metrics against $(BASE)"; echo; $(BIN)/dvc metrics diff --md '$(BASE)'; \
	  echo; echo "## Params against $(BASE)"; echo; $(BIN)/dvc params diff --md '$(BASE)'; \
	  } > results/ci/diff.md
	@echo "Comparison: results/ci/diff.md  Report: reports/report.md"

test: setup browser
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

# Headless Chromium for the test that opens the HTML report (Debian's package, as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the HTML report test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	      || echo "could not install chromium: the HTML report test will be skipped"; \
	  else echo "chromium not found: the HTML report test will be skipped"; fi; }

test-fast: setup
	$(BIN)/python -m pytest -n auto --dist loadfile -m "not slow"

# Compare variations the DVC way: queue one experiment per value, run them, show the table.
#   make exp-sweep PARAM=extract_features.augment_views VALUES=2,4,8
PARAM  ?= extract_features.augment_views
VALUES ?= 2,4,8
exp-sweep: setup
	$(BIN)/dvc exp run --queue -S '$(PARAM)=$(VALUES)'
	$(BIN)/dvc exp run --run-all
	$(MAKE) --no-print-directory exp-show

# The experiments side by side, as a terminal can show them: the verdict's headline
# (results/evaluate/headline.json: what to use, its test accuracy, what validation preferred,
# how many models tie, its cost; always kept) and the params that differ. headline.json also
# holds the interval and the best model's accuracy and cost; ALL=1 shows those and every
# model's metrics (metrics.json); `dvc exp show --json` always carries everything (tools
# such as the VS Code extension read it).
SECTIONS  := base|download|backbone|augment|extract_features|train_head|finetune|shift|curve|report
HEADLINE  := (recommended|test_acc|best_on_val|tie_set|time_s|crossover_per_class)$$
NOT_PARAM := (?!($(SECTIONS))\.)[^:]*[./]|test_acc_ci_|best_test_acc|best_time_s|State|Executor|Created
ALL ?=
exp-show: setup
	$(BIN)/dvc exp show --only-changed --keep '$(HEADLINE)' \
	  --drop '$(if $(ALL),.*_(std|ci_lo|ci_hi)$$|.*(nll|ece|epochs|total_params|peak_gpu_mb|seeds)$$,$(NOT_PARAM))'

# How long `make repro` will take here, before it starts: the download stage lists and
# checks the images (its manifest gives the counts), then a few timed batches per backbone
# and strategy stand in for the work (src/transferlab/serve/plan.py). Trains nothing.
plan: setup
	$(BIN)/dvc repro download
	$(BIN)/transferlab plan

# Speed against the hardware and the obvious alternatives: bench/results/<machine>.{md,json}
bench: setup
	$(BIN)/python bench/bench.py

# The pipeline's overhead: every stage re-run from scratch, timed, against the work the runs
# record (bench/overhead.py; minutes: the whole default pipeline).
bench-overhead: setup
	@s=$$(date +%s); $(BIN)/dvc repro --force && \
	  $(BIN)/python bench/overhead.py --wall $$(( $$(date +%s) - s ))

# The decision procedure against the truth: user data sets drawn from a large pool, the real
# pipeline on each, every arm scored on images no run saw (bench/audit.py; its docstring).
# The default (3 sizes x 2 difficulties x 5 data sets) took 45 min on a 2-core CPU.
#   make audit AUDIT_ARGS='--sizes 20 60 --reps 3 --name quick'
#   make audit AUDIT_ARGS='--reread bench/results/audit-cpu.json --install-gap-model'
#   make audit AUDIT_ARGS='--reread bench/results/audit-cpu.json bench/results/audit-cpu-distance.json
#                          --name cpu-both'   # audits of both axes: one table, one gap predictor
AUDIT_ARGS ?=
audit: setup
	$(BIN)/python bench/audit.py $(AUDIT_ARGS)

# The same three checks run before every commit with pre-commit (.pre-commit-config.yaml):
#   .venv/bin/pre-commit install
lint: setup
	$(BIN)/ruff check src stages tests bench
	$(BIN)/ruff format --check src stages tests bench
	$(BIN)/mypy

clean-venv:
	rm -rf $(VENV)
