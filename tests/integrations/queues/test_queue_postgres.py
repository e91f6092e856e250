"""A PostgreSQL-backed queue on 127.0.0.1:5432 (database `test`), read by a configured query."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from fractions import Fraction
from urllib.parse import quote

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from tests.integrations.queues.support import check_drain, port_open
from integrations.queues.postgres import COLUMNS
from integrations.queues.source import QueueSource

DSN = "postgresql://postgres@127.0.0.1:5432/test"

pytestmark = pytest.mark.skipif(not port_open(5432), reason="PostgreSQL is not running on 127.0.0.1:5432")


@pytest.fixture
async def table(unique):
    name = unique.replace("-", "_")
    conn = await asyncpg.connect(DSN)
    await conn.execute(f"""CREATE TABLE {name} (
        id serial PRIMARY KEY, state text NOT NULL DEFAULT 'ready',
        created_at timestamptz NOT NULL DEFAULT now(), run_at timestamptz NOT NULL DEFAULT now())""")
    yield conn, name
    await conn.execute(f"DROP TABLE {name}")
    await conn.close()


def query(table: str) -> str:
    return f"""SELECT count(*) FILTER (WHERE state = 'ready' AND run_at <= now()) AS depth,
                      count(*) FILTER (WHERE state = 'running') AS in_flight,
                      count(*) FILTER (WHERE state = 'ready' AND run_at > now()) AS delayed,
                      extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'ready' AND run_at <= now()))
                          AS oldest_age_seconds
               FROM {table}"""


async def test_query_columns_become_the_reading(config, hub, exported, table, clock):
    table, name = table
    await table.execute(f"INSERT INTO {name} (created_at) VALUES (now() - interval '90 seconds')")
    await table.execute(f"INSERT INTO {name} (state) SELECT 'ready' FROM generate_series(1, 4)")
    await table.execute(f"INSERT INTO {name} (state) SELECT 'running' FROM generate_series(1, 2)")
    await table.execute(f"INSERT INTO {name} (run_at) SELECT now() + interval '1 hour' FROM generate_series(1, 3)")
    source = QueueSource(config, hub, f"{DSN}?name={name}&query={quote(query(name))}", clock=clock)
    assert await source.poll(), source.last_error
    values = exported.queue(name)
    age = values.pop("oldest_age_seconds")
    assert values == {"depth": 5.0, "in_flight": 2.0, "delayed": 3.0}
    assert 90 <= age < 92
    assert exported.labels("queue_depth", name)["queue_type"] == "postgres"
    await source.probe.close()


async def test_query_file_and_interval_age(config, hub, exported, table, clock, tmp_path):
    table, name = table
    await table.execute(f"INSERT INTO {name} (created_at) VALUES (now() - interval '1 hour'), (now())")
    sql = tmp_path / "queue.sql"
    sql.write_text(f"SELECT count(*) AS depth, now() - min(created_at) AS oldest_age_seconds FROM {name}")
    source = QueueSource(config, hub, f"{DSN}?name=jobs&query_file={sql}", clock=clock)
    assert await source.poll(), source.last_error
    values = exported.queue("jobs")
    assert values["depth"] == 2.0
    assert 3600 <= values["oldest_age_seconds"] < 3602  # an interval, in seconds
    await table.execute(f"DELETE FROM {name}")
    assert await source.poll()
    assert exported.queue("jobs") == {"depth": 0.0, "oldest_age_seconds": 0.0}  # min() of nothing is NULL
    await source.probe.close()


async def test_session_is_read_only(config, hub, exported, table, clock):
    table, name = table
    sql = quote(f"INSERT INTO {name} DEFAULT VALUES RETURNING 1 AS depth")
    source = QueueSource(config, hub, f"{DSN}?name={name}&query={sql}", clock=clock)
    assert not await source.poll()
    assert hub.metrics.get("tasklens.queue.poll_errors", queue=name, reason="query") == 1
    assert "read-only" in source.status()["last_error"]
    assert await table.fetchval(f"SELECT count(*) FROM {name}") == 0
    await source.probe.close()


@pytest.mark.parametrize("sql, reason", [
    ("SELECT 1 AS backlog", "bad_reply"),
    ("SELECT 'x' AS depth", "bad_reply"),
    ("SELECT 1 AS depth WHERE false", "bad_reply"),
    ("SELECT count(*) AS depth FROM no_such_table_tl", "not_found"),
    ("SELECT 9007199254740993::bigint AS depth", "bad_reply"),  # 2**53 + 1: a float reads it as 2**53
    ("SELECT 1 AS depth, 9007199254740993::numeric AS in_flight", "bad_reply"),
    ("SELECT 2.5 AS depth", "bad_reply"),  # not a count
    ("SELECT 'NaN'::numeric AS depth", "bad_reply"),
    ("SELECT -1 AS depth", "bad_reply"),
])
async def test_bad_queries_are_counted_errors(config, hub, exported, clock, sql, reason):
    source = QueueSource(config, hub, f"{DSN}?name=bad&query={quote(sql)}", clock=clock)
    assert not await source.poll()
    assert exported.queue("bad") == {}
    assert hub.metrics.get("tasklens.queue.poll_errors", queue="bad", reason=reason) == 1
    await source.probe.close()


async def test_a_count_up_to_2_53_is_published_exactly(config, hub, exported, clock):
    sql = quote("SELECT 9007199254740992::bigint AS depth, 4.000::numeric AS in_flight, 1.25 AS oldest_age_seconds")
    source = QueueSource(config, hub, f"{DSN}?name=big&query={sql}", clock=clock)
    assert await source.poll(), source.last_error
    assert exported.queue("big") == {"depth": 2.0**53, "in_flight": 4.0, "oldest_age_seconds": 1.25}
    await source.probe.close()


def literal(value: int | Decimal | float) -> str:
    """`value` in SQL, in the type a query gives it: bigint (numeric past its range), numeric, float8."""
    if isinstance(value, int):
        return f"{value}::bigint" if -2**63 <= value < 2**63 else f"{value}::numeric"
    if isinstance(value, Decimal):
        return f"'{value}'::numeric"
    return f"'{value!r}'::float8".replace("nan", "NaN").replace("inf", "Infinity")


AROUND_2_53 = st.integers(2**53 - 2, 2**53 + 2)
NUMBERS = st.one_of(
    st.integers(-2**64, 2**64), AROUND_2_53, AROUND_2_53.map(Decimal), AROUND_2_53.map(lambda n: Decimal(n) / 2),
    st.decimals(min_value=-2**54, max_value=2**54), st.sampled_from([Decimal("NaN"), Decimal("Infinity")]),
    st.floats(), st.floats(0, 2**54).map(float.__floor__).map(float))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.fixed_dictionaries({"depth": NUMBERS}, optional={c: NUMBERS for c in COLUMNS[1:]}))
def test_any_number_a_query_returns_is_published_exactly_or_is_a_bad_reply(row: dict[str, int | Decimal | float]
                                                                           ) -> None:
    """A count (bigint, numeric or float8) is published only when it is a whole number from 0 to 2**53, and then
    exactly the number the query returned; an age any number in that range; anything else is a `bad_reply` gap."""
    hub = Hub(Identity(service="worker"))
    sql = "SELECT " + ", ".join(f"{literal(v)} AS {c}" for c, v in row.items())
    source = QueueSource(Config(), hub, f"{DSN}?name=numbers&query={quote(sql)}")

    async def poll() -> bool:
        try:
            return await source.poll()
        finally:
            await source.probe.close()

    def valid(column: str, value: int | Decimal | float) -> bool:
        if isinstance(value, (float, Decimal)) and not math.isfinite(value):
            return False
        return 0 <= Fraction(value) <= 2**53 and (column == "oldest_age_seconds" or Fraction(value).denominator == 1)

    ok = all(valid(c, v) for c, v in row.items())
    assert asyncio.run(poll()) is ok, (sql, source.last_error)
    if ok:
        published = {name.removeprefix("queue."): v for name, v in source.status()["values"].items()
                     if name.removeprefix("queue.") in COLUMNS}
        assert published == {c: float(v) for c, v in row.items()}, sql
        assert all(Fraction(published[c]) == Fraction(v) for c, v in row.items() if c != "oldest_age_seconds"), sql
    else:
        assert hub.metrics.get("tasklens.queue.poll_errors", queue="numbers", reason="bad_reply") == 1, source.last_error


async def test_drain_trend(config, hub, exported, table, clock):
    table, name = table
    await table.execute(f"INSERT INTO {name} (state) SELECT 'ready' FROM generate_series(1, 20)")
    sql = quote(f"SELECT count(*) AS depth FROM {name}")
    source = QueueSource(config, hub, f"{DSN}?name={name}&query={sql}", clock=clock)

    async def take(n):
        await table.execute(f"DELETE FROM {name} WHERE id IN (SELECT id FROM {name} ORDER BY id LIMIT {n})")

    await check_drain(source, clock, exported, take, depth=20)
    await source.probe.close()


@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30))
def test_the_queue_is_named_after_the_database_as_the_client_reads_it(database: str) -> None:
    # `/review%20db` is the database `review db` for asyncpg, and so for the `queue` label
    from integrations.queues.base import parse_queue_url
    from integrations.queues.postgres import BROKER

    url = parse_queue_url(f"postgresql://u@h/{quote(database, safe='')}?query=SELECT%201", BROKER.params, True)
    assert BROKER.name(url) == database
