#!/usr/bin/env bash
# Makes sure a RabbitMQ broker accepts AMQP connections on 127.0.0.1:5672.
#
# Starts an installed rabbitmq-server that is not running; installs it with apt-get where it is
# missing and we are root on Debian; then waits until the broker answers.
set -euo pipefail

host=127.0.0.1
port=5672

listening() {
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

if listening; then
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-broker: installing rabbitmq-server" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
  else
    echo "ensure-broker: no broker on $host:$port and rabbitmq-server is not installed;" \
      "install it (apt-get install rabbitmq-server) or set LEPUS_TEST_URL" >&2
    exit 1
  fi
fi

if ! listening; then
  echo "ensure-broker: starting rabbitmq-server" >&2
  rabbitmq-server -detached || true
fi

for _ in $(seq 1 120); do
  if listening; then
    # The port opens before every plugin and vhost is ready; wait for the app as well.
    if command -v rabbitmqctl >/dev/null 2>&1; then
      timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
    fi
    exit 0
  fi
  sleep 1
done
echo "ensure-broker: RabbitMQ did not start listening on $host:$port within 120 s" >&2
exit 1
