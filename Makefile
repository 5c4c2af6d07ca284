# recsvc's front door: every job people and CI run goes through a target here.
# `make help` lists them. Targets create or reuse .venv and install from requirements.lock.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
UV          := $(VENV)/bin/uv
UV_VERSION  := 0.13.8
STAMP       := $(VENV)/.installed
export RECSVC_DATA_DIR ?= data
# the population `make run` / `make features` simulate when there is no data yet: the job's
# defaults (20,000 members x 540 days, seed 7) unless SIM_MEMBERS, SIM_DAYS or SIM_SEED say
# otherwise; asked of data simulated with another size, the job refuses and says how to start again
SIM_ARGS = $(if $(SIM_MEMBERS),--members $(SIM_MEMBERS)) $(if $(SIM_DAYS),--days $(SIM_DAYS)) \
           $(if $(SIM_SEED),--seed $(SIM_SEED))
PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: help install lock buf lint prometheus-tools proto run stop test features train retrain score-batch bench fuzz chaos \
        bench-features bench-models bench-churn-logs bench-cli bench-scale clean fraud-flags catalogue-report nudges liability-report

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "} {name[NR] = $$1; text[NR] = $$2; \
	       if (length($$1) > w) w = length($$1)} \
	       END {for (i = 1; i <= NR; i++) printf "  make %-*s  %s\n", w, name[i], text[i]}'

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)

$(UV): | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# Reinstall only when the lock or the project metadata changed: a second run takes seconds.
# Bytecode is compiled at install (~10 s once), as the Dockerfile does: where Python may not
# write it (PYTHONDONTWRITEBYTECODE, a read-only venv) every process would compile every
# module it imports again, 3 s of each serving worker's start.
$(STAMP): requirements.lock pyproject.toml | $(UV)
	$(UV) pip sync --quiet --compile-bytecode --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	@touch $@

install: $(STAMP) ## create .venv and install the locked dependencies and recsvc
	@echo "recsvc installed in $(VENV) ($$($(PY) --version))"

lock: | $(UV) ## re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile --quiet pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

BUF := node_modules/.bin/buf
PROTO_SRC := protos/recsvc/v1/recsvc.proto
PROTO_OUT := src/recsvc/v1/recsvc_pb2.py src/recsvc/v1/recsvc_pb2.pyi src/recsvc/v1/recsvc_pb2_grpc.py

$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	@touch $@

buf: $(BUF) ## install buf (node_modules/.bin/buf, needs Node.js) to call the service with `buf curl`

proto: $(STAMP) ## regenerate the Python code of the recsvc.v1 contract (grpcio-tools)
	$(PY) -m grpc_tools.protoc -I protos --python_out=src --pyi_out=src --grpc_python_out=src \
	  $(PROTO_SRC)

lint: $(STAMP) $(BUF) prometheus-tools ## ruff, mypy, buf, promtool, hadolint, k8s schemas
	$(VENV)/bin/ruff check src tests bench training feature_repo
	$(VENV)/bin/mypy src
	$(BUF) lint
	$(BUF) breaking --against protos/released/recsvc.v1.binpb
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.yml
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/kubernetes-validate --strict --quiet \
	  $(filter-out deploy/k8s/kustomization.yaml,$(wildcard deploy/k8s/*.yaml)) \
	  deploy/k8s/dask/scheduler.yaml deploy/k8s/dask/workers.yaml

prometheus-tools: ## install prometheus and promtool (Debian's prometheus package) if missing
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
	   --no-install-recommends -o DPkg::Lock::Timeout=300 prometheus)

run: $(STAMP) ## serve on 127.0.0.1:50051 (metrics :9464); builds features and models if missing
	$(VENV)/bin/recsvc features $(strip $(SIM_ARGS))
	@$(VENV)/bin/recsvc models list churn | grep -q '^\*' || $(VENV)/bin/recsvc train
	@test -d $(RECSVC_DATA_DIR)/scores/member_fraud_flags || $(VENV)/bin/recsvc fraud-flags
	$(VENV)/bin/recsvc serve

# the pattern's [ ] keeps it from matching the shell that runs this recipe
stop: ## stop the `make run` of this checkout (SIGTERM: it drains, as Ctrl-C in its terminal does)
	@pids=$$(for p in $$(pgrep -f -- '$(VENV)/bin/recsvc[ ]serve'); do \
	  [ "$$(readlink /proc/$$p/cwd)" = "$(CURDIR)" ] && echo $$p; done); \
	if [ -z "$$pids" ]; then echo "make stop: no recsvc serve running from $(CURDIR)"; \
	else kill -TERM $$pids && echo "make stop: sent SIGTERM to recsvc serve (pid $$pids): it drains, then exits"; fi

# the Node.js client of the contract (clients/node), run by the tests against the real server
NODE_CLIENT := clients/node/node_modules/.package-lock.json
$(NODE_CLIENT): clients/node/package.json clients/node/package-lock.json
	npm ci --prefix clients/node --ignore-scripts --no-audit --no-fund --silent
	@touch $@

test: $(STAMP) $(NODE_CLIENT) ## run the whole test suite (needs Redis at 127.0.0.1:6379; starts one if absent)
	$(PY) -m pytest $(PYTEST_ARGS)

features: $(STAMP) ## simulate data if there is none, compute features, feast apply, materialise
	$(VENV)/bin/recsvc features $(strip $(SIM_ARGS))

train: $(STAMP) ## train, evaluate and (if the gates pass) promote both models (AS_OF=YYYY-MM-DD)
	$(VENV)/bin/recsvc train $(if $(AS_OF),--as-of $(AS_OF))

retrain: $(STAMP) ## the scheduled job: refresh features, train, gate, promote (exit codes: --help)
	$(VENV)/bin/recsvc retrain $(if $(AS_OF),--as-of $(AS_OF))

score-batch: $(STAMP) ## churn score, band, segment and action for every member (OUT=file.csv)
	$(VENV)/bin/recsvc score-batch $(if $(AS_OF),--as-of $(AS_OF)) $(if $(OUT),--out $(OUT))

catalogue-report: $(STAMP) ## forecast, safety level, turnover and inventory flags per item (AS_OF=, OUT=dir)
	$(VENV)/bin/recsvc catalogue-report $(if $(AS_OF),--as-of $(AS_OF)) $(if $(OUT),--out $(OUT))

# Without AS_OF the forecast starts HORIZON whole months before the end of the last whole month
# of data, so every forecast month can be compared with what the ledger did (--backtest).
liability-report: $(STAMP) ## points-liability forecast with backtest (AS_OF=YYYY-MM-DD, HORIZON=12, OUT=dir)
	$(VENV)/bin/recsvc liability-report --backtest $(if $(AS_OF),--as-of $(AS_OF)) \
	  $(if $(HORIZON),--horizon-months $(HORIZON)) $(if $(OUT),--out $(OUT))

fraud-flags: $(STAMP) ## points-fraud flags per member: rules + isolation forest, online (AS_OF=, OUT=file.csv)
	$(VENV)/bin/recsvc fraud-flags $(if $(AS_OF),--as-of $(AS_OF)) $(if $(OUT),--out $(OUT))

nudges: $(STAMP) ## every member's due nudges within the caps (AS_OF=YYYY-MM-DD required, OUT=file.csv, CHANNEL=, DRY_RUN=1)
	@test -n "$(AS_OF)" || { echo "make nudges: AS_OF=YYYY-MM-DD is required" >&2; exit 2; }
	$(VENV)/bin/recsvc nudges --as-of $(AS_OF) $(if $(OUT),--out $(OUT)) \
	  $(if $(CHANNEL),--channel $(CHANNEL)) $(if $(DRY_RUN),--dry-run)

bench: $(STAMP) ## gRPC serving: latency and req/s per RPC vs an echo floor and Feast (BENCH_ARGS=--quick); others: bench-features, bench-models
	$(PY) bench/bench_serving.py $(BENCH_ARGS)

N ?= 100000
fuzz: $(STAMP) ## N hostile requests (default 100,000) against recsvc serve: codes per RPC, 0 INTERNAL
	$(PY) bench/fuzz.py --calls $(N)

chaos: $(STAMP) ## faults under load (Redis, workers, models, drain, cancels, cap file): bench/results/chaos.md
	$(PY) bench/chaos.py

bench-features: $(STAMP) ## benchmark simulator, feature jobs, materialisation and online reads
	$(PY) bench/bench_features.py $(BENCH_ARGS)

bench-models: $(STAMP) ## benchmark training time, predict latency (Booster vs lleaves), batch scoring
	$(PY) bench/bench_models.py $(BENCH_ARGS)

bench-scale: $(STAMP) ## batch jobs at 1M and 5M members, local vs Dask workers (BENCH_ARGS="--members 100000,200000")
	$(PY) bench/bench_scale.py $(BENCH_ARGS)

bench-churn-logs: $(STAMP) ## the churn gate on four real-shaped logs (BG/NBD, Pareto/NBD, seasonal, abrupt stop) and a short history
	$(PY) bench/bench_churn_logs.py $(BENCH_ARGS)

bench-cli: $(STAMP) ## how fast `recsvc --help` and `recsvc client` start (BENCH_ARGS="--address 127.0.0.1:50051" times a call)
	$(PY) bench/bench_cli.py $(BENCH_ARGS)

clean: ## remove generated data (keeps .venv)
	rm -rf $(RECSVC_DATA_DIR) .pytest_cache .mypy_cache .ruff_cache
