# A MongoDB stand-in for tests and demos where no MongoDB image can be pulled: nx-27017
# (MongoDB wire protocol, change streams) at the version uv.lock pins. Not for production.
#   docker build -f images/nx27017.Dockerfile -t cdcflow-nx27017 .
# The server listens on 127.0.0.1:27017 by default; NX_PORT and NX_BIND change that.
ARG BASE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${BASE} AS python
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; fi

FROM python AS build
RUN if ! python3 -c 'import ensurepip' 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3-venv; fi
RUN --mount=type=secret,id=cacert --mount=type=cache,target=/root/.cache \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && python3 -m venv /opt/nx && /opt/nx/bin/pip install --quiet nx-27017==0.8.1 \
    && /opt/nx/bin/pip uninstall --yes --quiet pip

FROM python
ARG VERSION=0.8.1
LABEL org.opencontainers.image.title="cdcflow-nx27017" \
      org.opencontainers.image.description="nx-27017, a MongoDB wire-protocol stand-in for cdcflow's tests" \
      org.opencontainers.image.source="https://github.com/cdcflow/cdcflow" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin nx \
    && mkdir /data && chown nx:nx /data
COPY --from=build /opt/nx /opt/nx
ENV PATH=/opt/nx/bin:$PATH NX_PORT=27017 NX_BIND=127.0.0.1
USER 10001:10001
VOLUME /data
EXPOSE 27017
ENTRYPOINT ["/bin/sh", "-c", "exec nx-27017 --db /data/nx.db --log-file /data/nx.log --pid-file /tmp/nx.pid --host \"$NX_BIND\" -p \"$NX_PORT\" \"$@\"", "nx-27017"]
