# syntax=docker/dockerfile:1
# Two images from one file (README: "Containers"):
#   docker build --target cloud  -t lsc4rec-cloud  .   # `lsc4rec cloud serve`: torch CPU build, transformers, gRPC
#   docker build --target device -t lsc4rec-device .   # `lsc4rec device ...`: the on-device runtime, no torch
# The install steps are the Makefile's (tests/test_dockerfile.py keeps them equal): torch==2.13.0 first, then the
# project with -c constraints.txt, which pins torch so pip never swaps in another build. Both run as a non-root user.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin lsc4rec
WORKDIR /opt/lsc4rec

# The sources only (.dockerignore keeps out .venv, runs/, data/, tests and caches).
FROM base AS source
COPY pyproject.toml constraints.txt README.md ./
COPY shared ./shared
COPY cloud ./cloud
COPY device ./device
COPY simulator ./simulator

FROM base AS device
COPY --from=source /opt/lsc4rec /opt/lsc4rec
RUN python -m pip install --upgrade pip \
 && python -m pip install -c constraints.txt '.[device]'
USER lsc4rec
ENTRYPOINT ["lsc4rec", "device"]
CMD ["--help"]

FROM base AS cloud
COPY --from=source /opt/lsc4rec /opt/lsc4rec
RUN python -m pip install --upgrade pip \
 && python -m pip install torch==2.13.0 \
 && python -m pip install -c constraints.txt '.[cloud]'
USER lsc4rec
ENV LSC4REC_HEALTH_ADDRESS=127.0.0.1:50051
EXPOSE 50051
# grpc_health_probe's check with the project's own gRPC client: exit 0 only when grpc.health.v1 reports SERVING
# (with --replicas N: once every replica is ready). Set LSC4REC_HEALTH_ADDRESS when serving on another port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; channel = grpc.insecure_channel(os.environ['LSC4REC_HEALTH_ADDRESS']); reply = g.HealthStub(channel).Check(h.HealthCheckRequest(service=''), timeout=3); sys.exit(0 if reply.status == h.HealthCheckResponse.SERVING else 1)"]
# SIGTERM (docker stop) drains every replica; give it the grace period: docker stop -t 40.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lsc4rec", "cloud", "serve", "--address", "0.0.0.0:50051", "--replicas", "auto"]
CMD ["--help"]
