# Entry points; every target installs what it needs first (idempotent).
.PHONY: run test test-unit test-cluster lint brokers stop bench fuzz

BROKER ?= kafka
PYTEST_ARGS ?=
FUZZ_ARGS ?=

run:            ## run the whole system on $(BROKER) (default kafka), no Docker
	BROKER=$(BROKER) scripts/run.sh

test:           ## lint and type check, unit tests, the transport conformance suite on every registered transport, the contract suite on real Kafka, RabbitMQ, NATS and Redis, foreign clients (Spring Kafka, RabbitMQ Java client, nats CLI), then node loss on 3-node clusters
	scripts/setup.sh
	scripts/foreign-clients.sh --background
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python -m pytest tests/unit tests/browser -q
	scripts/brokers.sh start all
	.venv/bin/python -m pytest tests/transport -v $(PYTEST_ARGS)
	.venv/bin/python -m pytest tests/contract -v $(PYTEST_ARGS)
	.venv/bin/python -m pytest tests/foreign -v $(PYTEST_ARGS)
	.venv/bin/python -m pytest tests/cluster -v -s $(PYTEST_ARGS)

test-cluster:   ## only the cluster tests (3-node Kafka, RabbitMQ and NATS clusters, service replicas on PostgreSQL)
	scripts/setup.sh
	.venv/bin/python -m pytest tests/cluster -v -s $(PYTEST_ARGS)

test-unit:
	scripts/setup.sh
	.venv/bin/python -m pytest tests/unit -q

lint:
	scripts/setup.sh
	.venv/bin/ruff check .
	.venv/bin/mypy

brokers:        ## start all three brokers
	scripts/brokers.sh start all

stop:           ## stop all brokers
	scripts/brokers.sh stop all

bench:          ## benchmarks on real Kafka, RabbitMQ and NATS (never part of test); options: BENCH_ARGS="--events 2000 --brokers nats"
	scripts/setup.sh
	scripts/brokers.sh start all
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1; }; }; } || \
	  echo "bench: wrk not installed (apt-get install wrk); HTTP ingest uses the Python load generator"
	.venv/bin/python -m bench $(BENCH_ARGS)

fuzz:           ## schemathesis (every check and phase, valid and invalid data) against the four services on $(BROKER); exits 1 on any failure (never part of test); options: FUZZ_ARGS="--max-examples 500"
	scripts/setup.sh
	scripts/brokers.sh start all
	BROKER=$(BROKER) FUZZ_ARGS='$(FUZZ_ARGS)' .venv/bin/python scripts/fuzz.py
