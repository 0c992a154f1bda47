#!/usr/bin/env bash
# Make sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) answer; start them if not.
# Exits non-zero when either cannot be brought up, so `make test` fails loudly.
set -uo pipefail

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
rabbit_up() {
    # The AMQP port accepting connections is not enough: wait for the app to be running.
    rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1
}

wait_for() {  # name, check-fn, seconds
    local name=$1 check=$2 secs=$3 i
    for ((i = 0; i < secs; i++)); do
        if $check; then echo "$name: up"; return 0; fi
        sleep 1
    done
    echo "$name: did not come up within ${secs}s" >&2
    return 1
}

status=0
if ! redis_up; then
    echo "redis: not answering, starting redis-server"
    command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no >/dev/null
fi
wait_for redis redis_up 30 || status=1

if ! rabbit_up; then
    echo "rabbitmq: not answering, starting rabbitmq-server"
    command -v rabbitmq-server >/dev/null || { echo "rabbitmq-server is not installed" >&2; exit 1; }
    rabbitmq-server -detached >/dev/null 2>&1 || true
fi
wait_for rabbitmq rabbit_up 120 || status=1
exit $status
