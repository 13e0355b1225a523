#!/usr/bin/env bash
# Run the whole system on one broker, no Docker: installs what is missing, starts
# the broker (BROKER=kafka|rabbit|nats|redis: any registered transport, default kafka) and the
# four services, and stops the services on Ctrl-C (the broker keeps running: scripts/brokers.sh stop).
# AUTH=1: on the secured broker profile (scripts/brokers.sh start <broker> --auth), each
# service connecting as its own broker user.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export BROKER="${BROKER:-kafka}"
[[ $BROKER =~ ^[a-z0-9_-]+$ ]] || { echo "error: BROKER=$BROKER is not a transport name" >&2; exit 2; }

scripts/setup.sh
# Any registered transport (entry-point group switchboard.transports: built-ins and plugins)
.venv/bin/python -c 'import sys; from brokers import registry; registry.check_name(sys.argv[1])' "$BROKER" 2>/dev/null || {
  valid=$(.venv/bin/python -c 'from brokers import registry; print(", ".join(registry.names()))')
  echo "error: BROKER=$BROKER is not supported; valid values are: $valid" >&2; exit 2; }
declare -A svc_env=()
if [[ ${AUTH:-0} == 1 ]]; then
  scripts/brokers.sh start "$BROKER" --auth
  case "$BROKER" in
    kafka) export BROKER_URL=localhost:29092 ;;
    rabbit) export BROKER_URL=amqp://localhost:5690/switchboard ;;
    nats) export BROKER_URL=nats://127.0.0.1:24222 ;;
  esac
  for svc in order inventory payment notification; do
    svc_env[$svc]=$(grep "^BROKER_PASSWORD_${svc^^}=" .local/auth/credentials.env | cut -d= -f2)
  done
else
  scripts/brokers.sh start "$BROKER"
fi

LOGS="$ROOT/.local/logs"
mkdir -p "$LOGS"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for svc in order inventory payment notification; do
  if [[ -n ${svc_env[$svc]:-} ]]; then # the password in the environment, not on the command line
    BROKER_USERNAME=$svc BROKER_PASSWORD=${svc_env[$svc]} .venv/bin/faststream run "services.$svc:app" >"$LOGS/$svc.log" 2>&1 &
  else
    .venv/bin/faststream run "services.$svc:app" >"$LOGS/$svc.log" 2>&1 &
  fi
  pids+=("$!")
done

for port in 8080 8081 8082 8083; do
  for _ in $(seq 1 120); do
    curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -fs "http://127.0.0.1:$port/ready" >/dev/null || {
    echo "error: service on port $port is not ready; see $LOGS/" >&2; tail -n 20 "$LOGS"/*.log >&2; exit 1; }
done

cat <<MSG
Switchboard is up on $BROKER${BROKER_URL:+ at $BROKER_URL} (logs: .local/logs/). Try the seed's order:

  curl -X POST http://localhost:8080/orders -H "Content-Type: application/json" \\
       -d '{"orderId": "1001", "productId": "P123", "quantity": 2}'
  curl http://localhost:8080/orders/1001
  curl http://localhost:8081/inventory/P123

Docs: http://localhost:8081/docs/asyncapi  Metrics: http://localhost:8081/metrics
Ctrl-C stops the services.
MSG
wait
