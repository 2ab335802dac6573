#!/usr/bin/env bash
# Extra RabbitMQ nodes on this machine, beside the main broker on 5672, for the failover and
# cluster tests (crates/lepus/tests/cluster.rs). Never touches the main node.
#
#   scripts/rabbitmq-nodes.sh cluster          # rabbitA/B/C on 5681-5683, clustered
#   scripts/rabbitmq-nodes.sh pair             # rabbitD/E on 5684-5685, independent
#   scripts/rabbitmq-nodes.sh ctl NODE ARGS... # rabbitmqctl against one of them
#   scripts/rabbitmq-nodes.sh stop NODE...     # stop nodes and remove their files
#
# Each node runs as the rabbitmq user (whose Erlang cookie they share), with its own config
# file naming its port: the main broker's /etc/rabbitmq/rabbitmq.conf pins 5672, and
# RABBITMQ_NODE_PORT does not override it.
set -euo pipefail

start_node() { # start_node NAME AMQP_PORT DIST_PORT
  local n=$1 p=$2 d=$3 base=/tmp/rmq-$1
  stop_node "$n"
  mkdir -p "$base"
  printf 'listeners.tcp.local = 127.0.0.1:%s\nloopback_users = none\n' "$p" >"$base/rabbitmq.conf"
  echo '[].' >"$base/enabled_plugins"
  chown -R rabbitmq "$base"
  su rabbitmq -s /bin/sh -c "cd /var/lib/rabbitmq && RABBITMQ_NODENAME=$n@localhost \
    RABBITMQ_CONFIG_FILE=$base/rabbitmq.conf RABBITMQ_DIST_PORT=$d \
    RABBITMQ_MNESIA_BASE=$base/mnesia RABBITMQ_LOG_BASE=$base/log RABBITMQ_PID_FILE=$base/pid \
    RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins \
    /usr/lib/rabbitmq/bin/rabbitmq-server -detached"
}

ctl() { # ctl NAME rabbitmqctl-arguments...
  local n=$1
  shift
  su rabbitmq -s /bin/sh -c "cd /var/lib/rabbitmq && /usr/lib/rabbitmq/bin/rabbitmqctl -n $n@localhost $*"
}

wait_node() { # wait_node NAME: until it answers (it takes a moment to register), then booted
  local n=$1
  for _ in $(seq 1 240); do
    ctl "$n" ping >/dev/null 2>&1 && break
    sleep 0.5
  done
  ctl "$n" await_startup --timeout 120 >/dev/null
}

stop_node() { # stop_node NAME: stops it if it runs, and removes its files
  local n=$1
  ctl "$n" stop >/dev/null 2>&1 || true
  rm -rf "/tmp/rmq-$n"
}

case "${1:-}" in
cluster)
  start_node rabbitA 5681 25681
  start_node rabbitB 5682 25682
  start_node rabbitC 5683 25683
  for n in rabbitA rabbitB rabbitC; do wait_node $n; done
  for n in rabbitB rabbitC; do
    ctl $n stop_app >/dev/null
    ctl $n reset >/dev/null 2>&1
    ctl $n join_cluster rabbitA@localhost >/dev/null 2>&1
    ctl $n start_app >/dev/null 2>&1
  done
  ctl rabbitA await_online_nodes 3 --timeout 120 >/dev/null
  ;;
pair)
  start_node rabbitD 5684 25684
  start_node rabbitE 5685 25685
  for n in rabbitD rabbitE; do wait_node $n; done
  ;;
ctl)
  shift
  ctl "$@"
  ;;
stop)
  shift
  for n in "$@"; do stop_node "$n"; done
  ;;
*)
  echo "usage: $0 cluster | pair | ctl NODE ARGS... | stop NODE..." >&2
  exit 2
  ;;
esac
