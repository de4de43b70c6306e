# syntax=docker/dockerfile:1
# Gatehouse image. CPU by default; the CUDA image starts from the official PyTorch CUDA image:
#   docker build -t gatehouse:cpu .
#   docker build --build-arg VARIANT=cuda -t gatehouse:cuda .
# Both install exactly as the README does: `pip install torch==2.13.0`, then `pip install .`.

ARG VARIANT=cpu
ARG CPU_BASE=python:3.11-slim-bookworm
# Keep the torch version here equal to the one pinned in pyproject.toml.
ARG CUDA_BASE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

FROM ${CPU_BASE} AS base-cpu
# The CPU wheels: PyPI's Linux wheel of torch bundles ~3 GB of CUDA libraries a CPU image
# would never use. pip reads this variable, so the install command itself stays the README's.
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM ${CUDA_BASE} AS base-cuda

FROM base-${VARIANT} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --- build: a virtual environment holding torch (CPU) or seeing it (CUDA base), then the project.
FROM base AS build
# --system-site-packages: on the CUDA base, torch already sits in the base Python; the venv
# sees it, and `pip install torch==2.13.0` finds it satisfied instead of downloading it again.
RUN python -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
RUN pip install . && python -c "import service.app, models.lm"
# EXTRAS: optional extras of pyproject.toml on top, e.g. `scale` (the Redis and PostgreSQL
# clients, for docker-compose.yml's scale profile and deploy/kubernetes/).
ARG EXTRAS=""
RUN if [ -n "$EXTRAS" ]; then pip install ".[$EXTRAS]"; fi

# --- runtime: the venv only, no sources, no build tools, not root.
FROM base AS runtime
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/gatehouse gatehouse \
    && mkdir -p /data/models \
    && chown -R gatehouse:gatehouse /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    GATEHOUSE_HOST=0.0.0.0 \
    GATEHOUSE_PORT=8000 \
    GATEHOUSE_MODEL_DIR=/data/models
USER gatehouse
WORKDIR /home/gatehouse
# The model store (and the jobs database inside it) outlives the container.
VOLUME ["/data/models"]
EXPOSE 8000
# /healthz answers while the process runs, also while the default models train on first start.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEHOUSE_PORT', '8000'), timeout=4)" || exit 1
# Listening on 0.0.0.0 needs GATEHOUSE_API_KEY: the server refuses to start open on a
# reachable address (set GATEHOUSE_ALLOW_OPEN=true to do that on purpose).
CMD ["python", "-m", "service"]
