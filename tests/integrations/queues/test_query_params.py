"""Queue URL parameters are read as a URL's query (RFC 3986), not as an HTML form: a `+` is a plus.
`parse_qsl` read `?list=jobs+high` as the key `jobs high`, which does not exist, and an absent Redis
key reads as 0: the queue looked healthy and empty (docs/queues.md, "A 0 would make a broken broker
look like a healthy, empty queue")."""

from __future__ import annotations

import unicodedata
import uuid
from urllib.parse import quote

import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st

from integrations.queues.base import parse_queue_url, query_params
from integrations.queues.source import QueueSource
from tests.integrations.queues.support import port_open

REDIS = "redis://127.0.0.1:6379/0"


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
       st.sampled_from(["", "+", "+/:@!$'()*,;", "/"]))
def test_a_name_reads_back_as_written_however_it_is_quoted(name: str, safe: str) -> None:
    """Whatever a user leaves unencoded of `& = % #` (which a query must encode), the name reads back."""
    written = quote(name, safe=safe)
    assert query_params(f"list={written}&name=n") == [("list", name), ("name", "n")]


@given(st.binary(min_size=1, max_size=12))
def test_a_name_of_bytes_reads_back_or_is_refused_never_replaced(name: bytes) -> None:
    """`list=review%FF`: a key UTF-8 cannot hold is refused; read as `review\ufffd` it would name another
    key, absent, and the queue would look healthy and empty."""
    try:
        text = name.decode()
    except UnicodeDecodeError:
        with pytest.raises(ValueError, match="not UTF-8"):
            query_params(f"list={quote(name, safe='')}")
        return
    assert query_params(f"list={quote(name, safe='')}") == [("list", text)]


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20), st.sampled_from(["name", "list"]))
def test_a_decoded_parameter_never_brings_a_control_character_into_a_label_or_log(text: str, key: str) -> None:
    """`name=orders%0A<a forged log line>`: refused, as a control character in any other setting is."""
    try:
        url = parse_queue_url(f"{REDIS}?{key}={quote(text, safe='')}", frozenset({"list"}))
    except ValueError as exc:
        assert "control characters" in str(exc) and any(unicodedata.category(c) == "Cc" for c in text)
        return
    assert not any(unicodedata.category(c) == "Cc" for c in (url.name or "") + "".join(url.params.values()))


@pytest.mark.skipif(not port_open(6379), reason="Redis is not running on 127.0.0.1:6379")
async def test_a_plus_in_a_redis_list_name_polls_that_key(config, hub) -> None:
    key = f"tasklens_test_{uuid.uuid4().hex[:8]}+high"
    client = redis.asyncio.from_url(REDIS, decode_responses=True)
    await client.rpush(key, "a", "b", "c")
    source = QueueSource(config, hub, f"{REDIS}?list={key}")
    try:
        assert await source.poll()
        assert (source.queue, source.last_values.get("queue.depth")) == (key, 3.0)
    finally:
        await source._close()
        await client.delete(key)
        await client.aclose()
