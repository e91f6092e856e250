"""A PostgreSQL-backed queue on 127.0.0.1:5432 (database `test`), read by a configured query."""

from __future__ import annotations

from urllib.parse import quote

import asyncpg
import pytest

from tests.integrations.queues.support import check_drain, port_open
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
])
async def test_bad_queries_are_counted_errors(config, hub, exported, clock, sql, reason):
    source = QueueSource(config, hub, f"{DSN}?name=bad&query={quote(sql)}", clock=clock)
    assert not await source.poll()
    assert exported.queue("bad") == {}
    assert hub.metrics.get("tasklens.queue.poll_errors", queue="bad", reason=reason) == 1
    await source.probe.close()


async def test_drain_trend(config, hub, exported, table, clock):
    table, name = table
    await table.execute(f"INSERT INTO {name} (state) SELECT 'ready' FROM generate_series(1, 20)")
    sql = quote(f"SELECT count(*) AS depth FROM {name}")
    source = QueueSource(config, hub, f"{DSN}?name={name}&query={sql}", clock=clock)

    async def take(n):
        await table.execute(f"DELETE FROM {name} WHERE id IN (SELECT id FROM {name} ORDER BY id LIMIT {n})")

    await check_drain(source, clock, exported, take, depth=20)
    await source.probe.close()
