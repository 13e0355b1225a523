# Entry points; every target installs what it needs first (idempotent).
.PHONY: run test test-unit lint brokers stop bench

BROKER ?= kafka
PYTEST_ARGS ?=

run:            ## run the whole system on $(BROKER) (default kafka), no Docker
	BROKER=$(BROKER) scripts/run.sh

test:           ## lint, unit tests, then the contract suite on real Kafka, RabbitMQ and NATS
	scripts/setup.sh
	.venv/bin/ruff check .
	.venv/bin/python -m pytest tests/unit -q
	scripts/brokers.sh start all
	.venv/bin/python -m pytest tests/contract -v $(PYTEST_ARGS)

test-unit:
	scripts/setup.sh
	.venv/bin/python -m pytest tests/unit -q

lint:
	scripts/setup.sh
	.venv/bin/ruff check .

brokers:        ## start all three brokers
	scripts/brokers.sh start all

stop:           ## stop all brokers
	scripts/brokers.sh stop all
