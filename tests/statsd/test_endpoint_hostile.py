"""The StatsD endpoint against careless configuration and hostile input: a mapping rule's `$0` (the
whole name) and a glob's `**` (refused), a line that trips a defect (lost alone), a live socket of
another type at TASKLENS_STATSD_SOCKET (never replaced), event bytes in UTF-8, a receive buffer the
kernel capped (warned about), and no new context while shedding, even after an expiry."""

from __future__ import annotations

import logging
import socket

import pytest

from agent.config import ConfigError
from agent.model import Kind
from agent.statsd import listener
from agent.statsd.flush import Flusher
from agent.statsd.interval import Limits
from agent.statsd.listener import open_udp, open_unix
from agent.statsd.mapping import compile_rules
from agent.statsd.receive import Aggregator
from tests.statsd.test_server import send, start  # noqa: F401  (fixture)


def counts(agg: Aggregator) -> dict[str, float]:
    batch = Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)
    return {s.name: s.value for s in batch.samples if s.kind is Kind.COUNT}  # type: ignore[misc]


# mapping rules: `$0` is the whole name (it was groups[-1]: an IndexError that cost the rest of the datagram)

@pytest.mark.usefixtures("both_loops")
def test_a_mapping_rule_with_dollar_zero_never_costs_the_other_lines() -> None:
    rules = compile_rules([{"match": "jobs.done", "name": "jobs_done_$0"}])  # a match without groups
    agg = Aggregator(rules=rules)
    agg.ingest(b"before:1|c\njobs.done:1|c\nafter:2|c")  # "Never raises on any input."
    got = counts(agg)
    assert got == {"before": 1.0, "jobs_done_jobs.done": 1.0, "after": 2.0}, got
    assert agg.stats.lines == 3


def test_dollar_zero_is_the_whole_name_and_a_double_star_is_refused() -> None:
    from agent.statsd.mapping import apply

    rules = compile_rules([{"match": "jobs.*.*", "name": "x_$2", "labels": {"name": "$0", "first": "${1}"}}])
    assert apply(rules, "jobs.a.b") == ("x_b", (("name", "jobs.a.b"), ("first", "a")))
    with pytest.raises(ConfigError, match=r"\*\*"):  # `**.x` against a long name took minutes to match
        compile_rules([{"match": "a.**.x", "name": "x"}])


@pytest.mark.usefixtures("both_loops")
def test_a_line_that_trips_a_defect_is_lost_alone_and_counted(monkeypatch) -> None:
    from agent.statsd import receive

    def broken(line: bytes) -> object:
        raise RuntimeError("a defect")

    monkeypatch.setattr(receive, "parse_event", broken)
    agg = Aggregator()
    agg.ingest(b"before:1|c\n_e{1,1}:a|b\nafter:2|c")
    assert counts(agg) == {"before": 1.0, "after": 2.0}
    assert agg.stats.errors["malformed_line"] == 1


async def test_a_dollar_zero_rule_costs_the_rest_of_the_datagram_in_the_server(start, tmp_path) -> None:  # noqa: F811
    path = tmp_path / "tasklens.toml"
    path.write_text('[[mappings]]\nmatch = "jobs.done"\nname = "jobs_done_$0"\n')
    r = await start(TASKLENS_CONFIG_FILE=str(path))  # `tasklens check` accepts this file
    send(r.port, b"jobs.done:1|c\nother:5|c")
    await r.wait_lines(2)  # both lines parsed (a fixed 0.3 s could pass first on a loaded machine)
    await r.server.flush()
    other = sum(s.value for s in r.recorder.samples() if s.name == "other")
    assert other == 5.0, (f"other={other}; receive_errors={r.hub.metrics.get('tasklens.statsd.receive_errors', reason='internal')}, "
                          f"parse_errors={dict(r.server.aggregator.stats.errors)}")


# a live socket of another type at TASKLENS_STATSD_SOCKET was taken for stale and unlinked

@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_SEQPACKET], ids=["stream", "seqpacket"])
def test_a_live_socket_of_another_type_is_not_replaced(tmp_path, kind: int) -> None:
    path = str(tmp_path / "live.socket")
    other = socket.socket(socket.AF_UNIX, kind)
    other.bind(path)
    other.listen()
    try:
        try:
            bound = open_unix(path, 65536)
        except OSError:
            bound = None  # "a live one is an error"
        if bound is not None:
            bound.sock.close()
        with socket.socket(socket.AF_UNIX, kind) as client:
            client.connect(path)  # the other process's clients still reach it
        assert bound is None, "a live socket was replaced"
    finally:
        other.close()


# event bytes were charged in characters: 4-byte UTF-8 text passed the limit four times over

@pytest.mark.usefixtures("both_loops")
def test_event_bytes_limit_holds_for_non_ascii_text() -> None:
    limit = 1024 * 1024
    agg = Aggregator(limits=Limits(event_bytes=limit))
    text = ("\U0001F600" * 8000).encode()  # 32,000 bytes of UTF-8 in 8,000 characters
    line = b"_e{%d,%d}:%s|%s" % (len(text), len(text), text, text)
    for _ in range(100):
        agg.ingest(line)
    held = sum(len(e.title.encode()) + len(e.text.encode()) for e, _ in agg.interval.events)
    assert held <= limit, f"{held} bytes of event text kept under a {limit}-byte limit ({len(agg.interval.events)} events)"


# a receive buffer capped by net.core.rmem_max to over half the request was not warned about

def test_a_receive_buffer_capped_by_rmem_max_is_warned_about(monkeypatch, caplog) -> None:
    with open("/proc/sys/net/core/rmem_max") as fh:
        rmem_max = int(fh.read())
    request = 2 * rmem_max  # e.g. the default 8M with rmem_max at 4M
    if not 4096 <= request <= 2**30:
        pytest.skip(f"rmem_max {rmem_max}")
    monkeypatch.setattr(listener, "SO_RCVBUFFORCE", 0x7FFF)  # as without CAP_NET_ADMIN: refused, SO_RCVBUF used
    caplog.set_level(logging.WARNING, logger="tasklens")
    listeners = open_udp("127.0.0.1", 0, request)
    try:
        granted = listeners[0].rcvbuf
        # the kernel stores twice what it allows: rmem_max was applied, half the request
        assert granted == 2 * rmem_max
        assert any("receive buffer" in r.getMessage() for r in caplog.records), \
            f"asked {request}, kernel capped it at rmem_max={rmem_max} (reported {granted}), no warning"
    finally:
        for l in listeners:
            l.sock.close()


# while shedding (`overload`), the C loop made new contexts again once some had expired

def test_no_new_context_while_shedding_even_after_an_expiry() -> None:
    agg = Aggregator(max_contexts=100, clock=lambda: 0.0)
    flusher = Flusher(10.0, ttl=15.0)
    agg.ingest(b"a:1|c\nb:1|c")
    flusher.batch(agg.swap(1000.0), now=1000.0)
    agg.shed(True)  # the receive side is far behind: new contexts are refused
    for now in (1010.0, 1020.0):
        agg.ingest(b"b:1|c")
        flusher.batch(agg.swap(now), now=now)
        agg.expire(flusher.expired(now + 10))  # `a` goes
    agg.ingest(b"new1:1|c\nnew2:1|c\nb:1|c")
    assert sorted(k[0] for k in agg.contexts) == ["b"], sorted(k[0] for k in agg.contexts)
    assert agg.stats.errors["overload"] == 2
