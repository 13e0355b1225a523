"""Benchmarks: `make bench` (or `python -m bench --help`).

Measures, per real broker, the raw client ceiling and the services' consumer path,
HTTP ingest, POST → RESERVED latency, throughput with failing messages and RSS.
Never part of `make test`.
"""
