# The operator image: the light core only (settings, naming, envelope, Kubernetes clients,
# kopf) - no Beam, chdb or pyarrow. Build from the repository root:
#   docker build -f images/operator.Dockerfile -t cdcflow-operator .
# BASE and the CA secret work as in workers.Dockerfile.
ARG BASE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${BASE} AS python
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; fi

FROM python AS build
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never UV_PYTHON=python3
RUN if ! python3 -c 'import ensurepip' 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3-venv; fi
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# No `--extra workers`: the core dependencies of pyproject.toml, as `pip install .`.
RUN --mount=type=secret,id=cacert --mount=type=cache,target=/root/.cache \
    if [ -s /run/secrets/cacert ]; then \
      export PIP_CERT=/run/secrets/cacert SSL_CERT_FILE=/run/secrets/cacert; fi \
    && python3 -m venv /opt/uv && /opt/uv/bin/pip install --quiet uv==0.13.9 \
    && /opt/uv/bin/uv sync --locked --no-dev --no-install-project
COPY workers ./workers
COPY operator ./operator
RUN --mount=type=secret,id=cacert --mount=type=cache,target=/root/.cache \
    if [ -s /run/secrets/cacert ]; then \
      export PIP_CERT=/run/secrets/cacert SSL_CERT_FILE=/run/secrets/cacert; fi \
    && /opt/uv/bin/uv sync --locked --no-dev --no-editable

FROM python
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin cdcflow
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/cdcflow
# kopf's liveness endpoint and the operator's metrics
EXPOSE 8080
ENTRYPOINT ["cdcflow-operator"]
CMD ["--help"]
# Labels last: a new revision or date changes only metadata, no layer is rebuilt.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="cdcflow-operator" \
      org.opencontainers.image.description="cdcflow's kopf operator: reconciles Pipeline resources" \
      org.opencontainers.image.source="https://github.com/cdcflow/cdcflow" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
