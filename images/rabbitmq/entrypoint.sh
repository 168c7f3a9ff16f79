#!/bin/sh
# Write rabbitmq.conf from the environment, then run the server in the foreground (the
# real script, not Debian's wrapper, which would switch users).
set -eu
bind="${RABBITMQ_BIND:-0.0.0.0}"
cat > "${RABBITMQ_CONFIG_FILE}.conf" <<CONF
listeners.tcp.default = ${bind}:${RABBITMQ_NODE_PORT}
management.tcp.port = ${RABBITMQ_MANAGEMENT_PORT}
management.tcp.ip = ${bind}
loopback_users = none
CONF
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
  printf 'default_user = %s\ndefault_pass = %s\n' "$RABBITMQ_DEFAULT_USER" "${RABBITMQ_DEFAULT_PASS:-}" \
    >> "${RABBITMQ_CONFIG_FILE}.conf"
fi
if [ "$bind" = 127.0.0.1 ]; then
  # Loopback only: epmd and the Erlang distribution port too (on the host network).
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
fi
exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
