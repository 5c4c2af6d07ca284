# recsvc's container image: `recsvc serve` by default; the same image runs the batch jobs
# (`recsvc retrain`, `recsvc score-batch`: see deploy/k8s/).
#
#   docker build -t recsvc:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v recsvc-data:/data -p 50051:50051 -p 9464:9464 \
#     -e RECSVC_REDIS_URL=redis://redis:6379/0 recsvc:0.1.0
#
# The root filesystem may be read-only: everything recsvc writes goes to /data (the volume:
# tables, features, the Feast registry, the model registry, job textfiles; the server only
# reads it) or to /tmp (prometheus-client's multiprocess directory, the lleaves compile cache,
# matplotlib's cache), which must be a tmpfs or an emptyDir. There is no home directory.
# Linted by hadolint (tests/test_deploy.py, `make lint`).

# ---- build: a virtual environment with the locked runtime dependencies and recsvc ----------
FROM python:3.11.15-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never

# the uv the Makefile pins (UV_VERSION)
RUN pip install --no-cache-dir "uv==0.13.8" \
    && uv venv --python /usr/local/bin/python3.11 /opt/venv

WORKDIR /build
COPY pyproject.toml requirements.lock ./
# requirements.lock also pins the dev tools (pytest, mypy, ruff, linters): resolve the runtime
# dependencies of pyproject.toml with every version constrained to the lock's, and install
# exactly those (no version here differs from the lock; the dev tools stay out of the image).
RUN uv pip compile --quiet pyproject.toml --constraint requirements.lock \
        --python /opt/venv/bin/python --output-file /tmp/runtime.lock \
    && uv pip sync --python /opt/venv/bin/python /tmp/runtime.lock

COPY README.md ./
COPY src ./src
# recsvc itself, not editable, without touching the locked dependencies
RUN uv pip install --python /opt/venv/bin/python --no-deps .

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.11.15-slim-bookworm

# libgomp1: LightGBM's OpenMP runtime (lib_lightgbm.so links libgomp.so.1, slim lacks it)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 recsvc \
    && useradd --system --uid 10001 --gid recsvc --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin recsvc \
    && mkdir -p /data \
    && chown recsvc:recsvc /data

COPY --from=builder /opt/venv /opt/venv
COPY feature_repo/feature_store.yaml feature_repo/definitions.py /app/feature_repo/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECSVC_DATA_DIR=/data \
    RECSVC_FEATURE_REPO=/app/feature_repo \
    RECSVC_GRPC_ADDRESS=0.0.0.0:50051 \
    RECSVC_METRICS_PORT=9464 \
    RECSVC_METRICS_ADDRESS=0.0.0.0 \
    RECSVC_COMPILED_CACHE=/tmp/recsvc-compiled \
    RECSVC_SIMULATE_WHEN_EMPTY=false \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache

WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 50051 9464

# The standard gRPC health service (grpc.health.v1) of the application service: SERVING once
# the models and the catalogue are loaded, NOT_SERVING while draining. The first start
# compiles the models (lleaves), hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(service='recsvc.v1.RedemptionService'), timeout=4); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["recsvc"]
CMD ["serve", "--address", "0.0.0.0:50051"]
