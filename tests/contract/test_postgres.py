"""docs/contract.md, `DATABASE_URL=postgresql://…`: the store-heavy cases again, on PostgreSQL.

A second system per broker runs all four services on one fresh PostgreSQL database
(scripts/postgres.sh; tables carry each service's prefix). The cases are the same
test functions as on SQLite, called with this system.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from tests.contract import test_failures, test_orders, test_saga
from tests.support.raw import RawClient
from tests.support.system import BASE_PORT, System, uid

pytestmark = pytest.mark.contract


@pytest.fixture(scope="session")
async def pg_system(
    broker: str, postgres_server: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[System]:
    database = uid("sb_")
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    sys_ = System(
        broker,
        tmp_path_factory.mktemp(f"pg-{broker}"),
        port_base=BASE_PORT[broker] + 50,
        DATABASE_URL=f"{postgres_server}/{database}",
    )
    try:
        await sys_.start()
        yield sys_
    finally:
        await sys_.aclose()


async def test_seed_curl_flow(pg_system: System) -> None:
    await test_orders.test_seed_curl_flow_deducts_stock(pg_system)


async def test_concurrent_orders_never_oversell(pg_system: System) -> None:
    await test_orders.test_concurrent_orders_never_oversell(pg_system)


async def test_payment_failure_compensates(pg_system: System) -> None:
    await test_orders.test_payment_failure_cancels_and_releases_stock(pg_system)


async def test_idempotent_post_and_one_event(pg_system: System, raw: RawClient) -> None:
    await test_orders.test_same_order_twice_is_one_order_and_one_event(pg_system, raw)


async def test_redelivery_reserves_once(pg_system: System, raw: RawClient) -> None:
    await test_orders.test_redelivered_order_created_reserves_once(pg_system, raw)


async def test_failing_order_dead_lettered(pg_system: System, raw: RawClient) -> None:
    await test_failures.test_failing_order_is_retried_with_backoff_then_dead_lettered(pg_system, raw)


async def test_saga_burst(pg_system: System) -> None:
    await test_saga.test_burst_of_mixed_orders_all_end_final_and_stock_adds_up(pg_system)
