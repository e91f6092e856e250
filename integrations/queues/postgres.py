"""PostgreSQL-backed queues: a configured SQL query returns the numbers, by column name.

    postgresql://user:pass@host:5432/app?name=jobs&query=SELECT count(*) AS depth FROM jobs WHERE ...
    postgresql://user:pass@host:5432/app?name=jobs&query_file=/etc/tasklens/jobs.sql

The first row's columns `depth` (required), `in_flight`, `delayed`, `consumers` and
`oldest_age_seconds` (a number or an interval) become the reading; a NULL is "not known". The query
runs in a read-only session with a statement timeout, so a mistake cannot change or lock the table
for long. Other URL parameters go to asyncpg (`sslmode=require`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from integrations.queues.base import Broker, ProbeError, QueueURL, Reading

OWN_PARAMS = ("query", "query_file")
COLUMNS = ("depth", "in_flight", "delayed", "consumers", "oldest_age_seconds")


def query_of(url: QueueURL) -> str:
    query, path = url.params.get("query", "").strip(), url.params.get("query_file", "").strip()
    if bool(query) == bool(path):
        raise ValueError("a PostgreSQL queue URL needs exactly one of ?query=<SQL> or ?query_file=<path>")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                query = fh.read().strip()
        except OSError as exc:
            raise ValueError(f"query_file={path!r}: {exc.strerror}") from None
    return query


def number(value: Any) -> int | float | Decimal | None:
    """A column's value as asyncpg gives it (a bigint as an int, a numeric as a Decimal), not rounded to a
    float here: `Reading.checked` refuses a count a float cannot hold exactly (2**53 + 1, 2.5)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return value
    raise ProbeError("bad_reply", f"expected a number, got {type(value).__name__}")


def reading_of(row: Mapping[str, Any] | None) -> Reading:
    if row is None:
        raise ProbeError("bad_reply", "the queue query returned no row")
    if "depth" not in row.keys():
        raise ProbeError("bad_reply", f"the queue query returned no `depth` column (got {', '.join(row.keys())})")
    values: dict[str, Any] = {c: number(row[c]) for c in COLUMNS if c in row.keys()}  # checked by the source
    if values["depth"] == 0 and "oldest_age_seconds" in values and values["oldest_age_seconds"] is None:
        values["oldest_age_seconds"] = 0.0  # min(created_at) over no rows is NULL: nothing is waiting
    return Reading(**values)


def _error(exc: Exception) -> Exception:
    import asyncpg

    text = str(exc)
    if isinstance(exc, (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError,
                        asyncpg.InsufficientPrivilegeError)):
        return ProbeError("auth", text)
    if isinstance(exc, (asyncpg.UndefinedTableError, asyncpg.InvalidCatalogNameError)):
        return ProbeError("not_found", text)
    if isinstance(exc, asyncpg.QueryCanceledError):
        return ProbeError("timeout", text)
    if isinstance(exc, asyncpg.InterfaceError) and "connection" not in text:
        return ProbeError("query", text)  # asyncpg's own refusal of the query (`$1` without an argument, ...)
    if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError, OSError)):
        return ProbeError("connection", text)
    if isinstance(exc, asyncpg.PostgresError):
        return ProbeError("query", text)
    return exc


class PostgresProbe:
    def __init__(self, url: QueueURL) -> None:
        self.url = url
        self.query = query_of(url)
        self._conn: Any = None

    async def read(self) -> Reading:
        import asyncpg

        timeout = self.url.poll_timeout
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(
                    self.url.client_url(keep=lambda k: k not in OWN_PARAMS), timeout=timeout,
                    server_settings={"application_name": "tasklens", "default_transaction_read_only": "on",
                                     "statement_timeout": str(int(timeout * 1000))})
            row = await self._conn.fetchrow(self.query, timeout=timeout)
        except Exception as exc:
            raise _error(exc) from exc
        return reading_of(row)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2.0)
            except Exception:  # a dead server: drop the socket without the goodbye
                conn.terminate()


def _name(url: QueueURL) -> str:
    query_of(url)  # validate early: a missing query is a configuration error, not a poll error
    return unquote(url.parts.path.strip("/")) or "postgres"  # `/review%20db` is the database `review db`


BROKER = Broker(
    queue_type="postgres",
    client="asyncpg",
    extra="postgres",
    params=frozenset(OWN_PARAMS),
    name=_name,
    reports=lambda url: COLUMNS,
    open=PostgresProbe,
    pass_through=True,
)
