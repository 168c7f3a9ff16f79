# The data-plane images: `cdcflow produce`, `cdcflow consume` (in-process runner),
# `cdcflow simulate`, `verify`, `status` ... configured entirely by CDCFLOW_* env.
# Build from the repository root:
#   docker build -f images/workers.Dockerfile -t cdcflow/workers .            (the default target)
#   docker build -f images/workers.Dockerfile --target flink -t cdcflow/flink .
# The `flink` target is the same image plus Java 17 and Beam's Flink job server (the jars
# images/flink/pom.xml resolves through Maven, checked against images/flink/jars.sha256,
# exactly what `make flink` fetches locally): the consumer on Beam's Flink runner.
# BASE names the base image: the official Python image pinned by digest by default; any
# Debian bookworm image works (python3 is installed from Debian when the base lacks it, as
# in the debootstrap base `make images` uses where no registry is reachable).
# A TLS-intercepting proxy's CA bundle goes in as a build secret only:
#   --secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt
# It is mounted for the one RUN that downloads and never lands in a layer.
ARG BASE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${BASE} AS python
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; fi

FROM python AS build
ARG EXTRAS="--extra workers"
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never UV_PYTHON=python3
RUN if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3-venv; fi
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# Dependencies first (cached while only the sources change); then the project itself.
RUN --mount=type=secret,id=cacert --mount=type=cache,target=/root/.cache \
    if [ -s /run/secrets/cacert ]; then \
      export PIP_CERT=/run/secrets/cacert SSL_CERT_FILE=/run/secrets/cacert; fi \
    && python3 -m venv /opt/uv && /opt/uv/bin/pip install --quiet uv==0.13.9 \
    && /opt/uv/bin/uv sync --locked --no-dev --no-install-project ${EXTRAS}
COPY workers ./workers
COPY operator ./operator
RUN --mount=type=secret,id=cacert --mount=type=cache,target=/root/.cache \
    if [ -s /run/secrets/cacert ]; then \
      export PIP_CERT=/run/secrets/cacert SSL_CERT_FILE=/run/secrets/cacert; fi \
    && /opt/uv/bin/uv sync --locked --no-dev --no-editable ${EXTRAS}

# Beam's Flink job server: resolved by the repository's pom, every jar checked against the
# committed checksums; the JDK, Maven and the proxy's CA stay in this stage.
FROM python AS jars
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven ca-certificates-java \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY images/flink/pom.xml images/flink/jars.sha256 ./
RUN --mount=type=secret,id=cacert --mount=type=cache,target=/root/.m2 \
    if [ -s /run/secrets/cacert ]; then \
      awk '/BEGIN CERTIFICATE/{n++; f="/usr/local/share/ca-certificates/build-" n ".crt"} \
           n{print > f} /END CERTIFICATE/{close(f)}' \
        /run/secrets/cacert && update-ca-certificates >/dev/null; fi \
    && mvn -B -q -C package \
    && mkdir -p /opt/cdcflow/flink \
    && mv target/cdcflow-flink-job-server.jar target/lib jars.sha256 /opt/cdcflow/flink/ \
    && cd /opt/cdcflow/flink && sha256sum --check --quiet --strict jars.sha256 \
    && test "$(find lib -name '*.jar' | wc -l)" -eq "$(grep -c ' lib/' jars.sha256)"

FROM python AS runtime
# /var/lib/cdcflow: where an embedded warehouse (chdb) or other state goes; owned by the
# user so a fresh named volume mounted there is writable.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin cdcflow \
    && mkdir -p /var/lib/cdcflow && chown 10001:10001 /var/lib/cdcflow
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CDCFLOW_LOG_FORMAT=json \
    CDCFLOW_METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/cdcflow
# /metrics, /healthz, /readyz (producer 9464, consumer 9465 unless CDCFLOW_METRICS_PORT)
EXPOSE 9464 9465
ENTRYPOINT ["cdcflow"]
CMD ["--help"]

# The consumer on Beam's Flink runner (Flink embedded in the pod, `cdcflow consume`).
FROM runtime AS flink
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
COPY --from=jars /opt/cdcflow/flink /opt/cdcflow/flink
ENV CDCFLOW_RUNNER=flink \
    CDCFLOW_FLINK_JOB_SERVER_JAR=/opt/cdcflow/flink/cdcflow-flink-job-server.jar
USER 10001:10001
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="cdcflow-flink" \
      org.opencontainers.image.description="cdcflow consumer on Beam's Flink runner: the workers image, Java 17 and Beam 2.62.0's Flink 1.19 job server" \
      org.opencontainers.image.source="https://github.com/cdcflow/cdcflow" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

# The default target: simulator, producer, in-process consumer, tools.
FROM runtime AS workers
USER 10001:10001
# Labels last: a new revision or date changes only metadata, no layer is rebuilt.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="cdcflow-workers" \
      org.opencontainers.image.description="cdcflow data plane: simulator, producer, in-process Beam consumer, verify" \
      org.opencontainers.image.source="https://github.com/cdcflow/cdcflow" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
