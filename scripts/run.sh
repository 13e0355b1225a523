#!/usr/bin/env bash
# Run the whole system on one broker, no Docker: installs what is missing, starts
# the broker (BROKER=kafka|rabbit|nats, default kafka) and the four services, and
# stops the services on Ctrl-C (the broker keeps running: scripts/brokers.sh stop).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export BROKER="${BROKER:-kafka}"
case "$BROKER" in
  kafka|rabbit|nats) ;;
  *) echo "error: BROKER=$BROKER is not supported; valid values are: kafka, rabbit, nats" >&2; exit 2 ;;
esac

scripts/setup.sh
scripts/brokers.sh start "$BROKER"

LOGS="$ROOT/.local/logs"
mkdir -p "$LOGS"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for svc in order inventory payment notification; do
  .venv/bin/faststream run "services.$svc:app" >"$LOGS/$svc.log" 2>&1 &
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
Switchboard is up on $BROKER (logs: .local/logs/). Try the seed's order:

  curl -X POST http://localhost:8080/orders -H "Content-Type: application/json" \\
       -d '{"orderId": "1001", "productId": "P123", "quantity": 2}'
  curl http://localhost:8080/orders/1001
  curl http://localhost:8081/inventory/P123

Docs: http://localhost:8081/docs/asyncapi  Metrics: http://localhost:8081/metrics
Ctrl-C stops the services.
MSG
wait
