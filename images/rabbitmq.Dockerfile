# A RabbitMQ stand-in with the management plugin, from Debian's rabbitmq-server package
# (3.10.8), for tests and demos where the official rabbitmq image cannot be pulled.
# Users who can pull use rabbitmq:3-management (docker-compose.yaml does).
#   docker build -f images/rabbitmq.Dockerfile -t cdcflow-rabbitmq .
# Listens on RABBITMQ_NODE_PORT (5672), management on RABBITMQ_MANAGEMENT_PORT (15672),
# both bound to RABBITMQ_BIND (0.0.0.0; the test override sets 127.0.0.1).
ARG BASE=debian:bookworm-slim@sha256:abd67ffcfa541b485a3dff59865ab629aa048a6c613e639d36e7456b0b229241

FROM ${BASE}
ARG VERSION=3.10.8
LABEL org.opencontainers.image.title="cdcflow-rabbitmq" \
      org.opencontainers.image.description="RabbitMQ with the management plugin, from Debian's package, for cdcflow's tests" \
      org.opencontainers.image.source="https://github.com/cdcflow/cdcflow" \
      org.opencontainers.image.licenses="MPL-2.0" \
      org.opencontainers.image.version="${VERSION}"
RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server curl \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    && mkdir -p /var/lib/rabbitmq /etc/rabbitmq \
    && echo '[rabbitmq_management].' > /etc/rabbitmq/enabled_plugins \
    && chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /etc/rabbitmq
COPY --chmod=0755 images/rabbitmq/entrypoint.sh /usr/local/bin/cdcflow-rabbitmq
ENV HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME=rabbit@localhost \
    RABBITMQ_NODE_PORT=5672 \
    RABBITMQ_MANAGEMENT_PORT=15672 \
    RABBITMQ_DIST_PORT=25672 \
    ERL_EPMD_PORT=4369 \
    RABBITMQ_BIND=0.0.0.0 \
    RABBITMQ_MNESIA_BASE=/var/lib/rabbitmq/mnesia \
    RABBITMQ_LOG_BASE=/var/lib/rabbitmq/log \
    RABBITMQ_LOGS=- \
    RABBITMQ_CONFIG_FILE=/var/lib/rabbitmq/rabbitmq \
    RABBITMQ_ENABLED_PLUGINS_FILE=/etc/rabbitmq/enabled_plugins
USER rabbitmq
VOLUME /var/lib/rabbitmq
EXPOSE 5672 15672
HEALTHCHECK --interval=5s --timeout=5s --retries=30 \
  CMD curl -fsS -u guest:guest "http://127.0.0.1:${RABBITMQ_MANAGEMENT_PORT}/api/health/checks/alarms" || exit 1
ENTRYPOINT ["/usr/local/bin/cdcflow-rabbitmq"]
