#!/usr/bin/env bash
# Start a local RabbitMQ without Docker (Debian/Ubuntu package or Homebrew) with the management and
# prometheus plugins enabled, and wait until AMQP (5672) and the management API (15672) answer.
# Safe to run again: a broker that runs is left running. `.ci/run` uses this.
set -euo pipefail

management="${DOCPROC_MANAGEMENT_URL:-http://localhost:15672}"

say() { printf 'rabbitmq: %s\n' "$*" >&2; }

if ! command -v rabbitmq-server >/dev/null 2>&1 && ! command -v brew >/dev/null 2>&1; then
  say "rabbitmq-server is not installed: apt-get install rabbitmq-server (Debian/Ubuntu),"
  say "brew install rabbitmq (macOS), or use: docker compose -f infra/docker-compose.yml up -d rabbitmq"
  exit 1
fi

if rabbitmqctl -q status >/dev/null 2>&1; then
  say "already running"
elif command -v brew >/dev/null 2>&1 && brew list rabbitmq >/dev/null 2>&1; then
  say "starting with brew services"
  brew services start rabbitmq
else
  say "starting rabbitmq-server -detached"
  rabbitmq-server -detached
fi

rabbitmqctl -q await_startup --timeout 60
rabbitmq-plugins -q enable rabbitmq_management rabbitmq_prometheus >/dev/null

for _ in $(seq 1 60); do
  if curl -fsS -u guest:guest "$management/api/overview" >/dev/null 2>&1; then
    say "ready: amqp://localhost:5672, management UI $management"
    exit 0
  fi
  sleep 1
done
say "the management API did not answer at $management within 60 s"
exit 1
