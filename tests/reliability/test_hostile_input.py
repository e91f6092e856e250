"""Hostile StatsD input against the real sidecar (UDP and Unix socket, exact bytes), exporting to
Prometheus and to the strict Datadog intake at once.

Datagrams at the maximum size, names and tags at and past their limits, a name longer than a UDP
datagram can carry, invalid UTF-8, `nan`, `inf`, `1e400`, `-0`: each rejected line is counted under
its reason, each valid line next to it is kept exactly, `/metrics` stays parseable, and the intake
receives no payload it would refuse.
"""

from __future__ import annotations

import math
import socket

import pytest

from tests.support import Sidecar, wait_until
from tests.reliability.scenarios import DD_KEY
from tests.reliability.support import Scrape, poll, scrape
from tests.sinks.intake import Intake, start_intake

UDP_MAX = 65507  # the largest UDP payload over IPv4
UDS_MAX = 65536  # the sidecar's limit for a datagram (Unix sockets can carry more)


def filled(size: int, name: bytes) -> tuple[bytes, int]:
    """A datagram of exactly `size` bytes of `name:1|c` lines; returns it and its number of lines."""
    line = name + b":1|c"
    n = size // (len(line) + 1) - 1
    body = b"\n".join([line] * n)
    rest = size - len(body) - 1  # one more line, its value padded with leading zeros to fill exactly
    last = name + b":" + b"0" * (rest - len(line)) + b"1|c"
    datagram = body + b"\n" + last
    assert len(datagram) == size
    return datagram, n + 1


def hostile() -> tuple[list[tuple[str, bytes]], dict[str, float], dict[str, int], int]:
    """(transport, datagram) pairs, the counter totals they must produce, the rejected lines by
    reason, and the number of lines."""
    out: list[tuple[str, bytes]] = []
    totals: dict[str, float] = {}
    lines = 0
    udp_max, n_udp = filled(UDP_MAX, b"max.udp")
    uds_max, n_uds = filled(UDS_MAX, b"max.uds")
    too_big, _ = filled(UDS_MAX + 1, b"max.over")
    out += [("udp", udp_max), ("uds", uds_max), ("uds", too_big)]
    totals["max_udp_total"], totals["max_uds_total"] = n_udp, n_uds
    lines += n_udp + n_uds + 1
    name200 = b"n" * 200
    out += [
        ("udp", name200 + b":1|c"),  # the longest name accepted
        ("udp", b"n" * 201 + b":1|c"),  # too_long
        ("udp", b"t200:2|c|#k:" + b"v" * 198),  # a 200-byte tag: accepted
        ("udp", b"t201:2|c|#k:" + b"v" * 199),  # too_long
        ("uds", b"x" * 65000 + b":1|c"),  # a name longer than any UDP datagram: too_long
        ("udp", b"bad\xff.name:1|c\nutf.ok:2|c\nutf.tag:1|c|#k:\xfe\xff\nutf.ok:3|c"),  # 2 malformed, 2 kept
        ("udp", b"num.nan:nan|c\nnum.inf:inf|c\nnum.ninf:-inf|g\nnum.big:1e400|c\nnum.NaN:NaN|h\n"
                b"num.negzero:-0|c\nnum.negzero:4|c\nnum.zero:-0|g\nnum.huge:1e308|g"),  # 5 bad_value
        ("udp", "métrique.été:4|c|#q:a\"b\\c,emoji:\U0001F600".encode()),  # valid UTF-8, odd characters
        ("uds", b"_e{4,60000}:huge|" + b"x" * 60000 + b"|t:warning"),  # an event text far past Datadog's 4000
        ("uds", b"_sc|huge.check|1|m:" + b"y" * 60000),  # a service check message as long
        ("udp", b"_e{40,2}:short|no"),  # lengths that do not match: bad_event
    ]
    totals[name200.decode() + "_total"] = 1
    totals["t200_total"] = 2
    totals["utf_ok_total"] = 5
    totals["num_negzero_total"] = 4
    totals["m_trique__t__total"] = 4
    lines += 2 + 2 + 1 + 4 + 9 + 1 + 3
    errors = {"too_long": 4, "malformed_line": 2, "bad_value": 5, "bad_event": 1}
    return out, totals, errors, lines


@pytest.mark.slow
async def test_hostile_datagrams_are_counted_and_the_rest_kept_exactly(tmp_path) -> None:
    path = str(tmp_path / "dsd.socket")
    async for intake in start_intake(Intake(DD_KEY)):
        sidecar = Sidecar(tmp_path, DD_API_KEY=DD_KEY, DD_DD_URL=intake.url, TASKLENS_FLUSH_INTERVAL="1",
                          TASKLENS_STATSD_SOCKET=path)
        try:
            await poll(lambda: sidecar.get("/ready")[0] == 200, 30, "sidecar ready")
            datagrams, totals, errors, lines = hostile()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            uds = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            uds.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for transport, datagram in datagrams:
                if transport == "udp":
                    udp.sendto(datagram, ("127.0.0.1", sidecar.statsd_port))
                else:
                    uds.sendto(datagram, path)
            udp.close()
            uds.close()
            await poll(lambda: scrape(sidecar).value("tasklens_statsd_lines_total") == lines, 15, "every line")

            def exported() -> Scrape:
                s = scrape(sidecar)
                assert all(s.value(name) == total for name, total in totals.items()), \
                    {n: s.value(n) for n in totals}
                return s
            await poll(exported, 45, "the valid lines exported")  # a flush waits on a busy machine: 15 s ran out once
            s = scrape(sidecar)
            assert s.by_label("tasklens_statsd_parse_errors_total", "reason") == {
                **{r: 0.0 for r in s.by_label("tasklens_statsd_parse_errors_total", "reason")}, **errors}
            assert s.value("tasklens_statsd_socket_drops_total") == 0
            # the odd but valid values, exactly
            assert s.value("num_huge") == 1e308
            (zero,) = [v for _, v in s.series("num_zero")]
            assert zero == 0.0
            labels = next(l for l, _ in s.series("m_trique__t__total"))
            assert (labels["q"], labels["emoji"]) == ('a"b\\c', "\U0001F600")
            assert not any(n.startswith(("num_nan", "num_inf", "num_ninf", "num_big", "num_NaN", "bad", "max_over"))
                           for n, _, _ in s.samples)
            # no exported value is NaN or infinite
            assert all(math.isfinite(v) for _, _, v in s.samples)

            # Datadog got the same kept values in payloads it accepts
            def dd_total(metric: str) -> float:
                return sum(v * (i or 1) for _, v, _, _, i in intake.points(metric))
            await poll(lambda: dd_total("utf.ok") == 5 and dd_total("max.udp") == totals["max_udp_total"]
                       and dd_total("max.uds") == totals["max_uds_total"], 45, "the intake's totals")
            assert dd_total("n" * 200) == 1 and dd_total("num.negzero") == 4
            # the huge event and service check, cut to what the intake takes, not refused whole
            await poll(lambda: intake.events and intake.checks, 15, "the event and the service check")
            assert [(e["title"], e["text"], e["alert_type"]) for e in intake.events] == [("huge", "x" * 4000, "warning")]
            assert [(c["check"], c["status"], c["message"]) for c in intake.checks] == [("huge.check", 1, "y" * 60000)]
            assert intake.errors == []
            assert sidecar.proc.poll() is None
        finally:
            if sidecar.proc.poll() is None:
                sidecar.stop()


@pytest.mark.slow
def test_a_denormal_sample_rate_never_makes_a_value_infinite(tmp_path) -> None:
    """`@1e-320` passes `0 < rate <= 1`, but `1 / rate` overflows: the line must be refused as
    `bad_rate` or counted as unsampled, never exported as +Inf."""
    sidecar = Sidecar(tmp_path, TASKLENS_FLUSH_INTERVAL="1")
    try:
        sidecar.wait_ready()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"rate.tiny:1|c|@1e-320\nrate.ok:1|c|@0.5", ("127.0.0.1", sidecar.statsd_port))
        wait_until(lambda: scrape(sidecar).value("rate_ok_total") == 2, 10, what="the valid line")
        exported = scrape(sidecar)
        value = exported.value("rate_tiny_total") if exported.has("rate_tiny_total") else None
        refused = exported.value("tasklens_statsd_parse_errors_total", reason="bad_rate")
        assert (value, refused) in ((None, 1.0), (1.0, 0.0)), (value, refused)
    finally:
        sidecar.stop()
