"""Queue probes, chosen by URL scheme: `open_probe(url)` and `describe_url(url)`.

A broker's module (and so its client library) is imported only when a URL of its scheme is used:
the idle sidecar does not carry six broker clients. URL forms: docs/queues.md.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from typing import Any

from integrations.queues.trend import trend_window
from integrations.queues.base import (DEFAULT_TIMEOUT, Broker, Probe, ProbeError, QueueURL, Reading, Target,
                                      mask_secret, parse_queue_url)

__all__ = ["DEFAULT_TIMEOUT", "SCHEMES", "Probe", "ProbeError", "QueueURL", "Reading", "Target", "broker_for",
           "describe_url", "load_client", "open_probe", "parse", "probe_for", "read_once"]

# scheme -> module defining `BROKER`
SCHEMES: dict[str, str] = {
    "sqs": "integrations.queues.sqs",
    "amqp": "integrations.queues.rabbitmq",
    "amqps": "integrations.queues.rabbitmq",
    "redis": "integrations.queues.redis",
    "rediss": "integrations.queues.redis",
    "nats": "integrations.queues.nats",
    "beanstalk": "integrations.queues.beanstalkd",
    "beanstalkd": "integrations.queues.beanstalkd",
    "postgres": "integrations.queues.postgres",
    "postgresql": "integrations.queues.postgres",
}


def broker_for(url: str) -> Broker:
    scheme = url.strip().partition("://")[0].lower()
    module = SCHEMES.get(scheme)
    if module is None:
        raise ValueError(f"unknown queue URL scheme {scheme!r} (known: {', '.join(sorted(SCHEMES))})")
    broker: Broker = importlib.import_module(module).BROKER
    return broker


def parse(url: str) -> Target:
    """The queue a URL names. Raises ValueError saying what is wrong (never with the password)."""
    broker = broker_for(url)
    parsed = parse_queue_url(url, broker.params, broker.pass_through)
    try:
        broker.check(parsed)
    except ValueError as exc:  # it may quote part of the URL, as parse_queue_url's errors do
        raise ValueError(mask_secret(str(exc), parsed)) from None
    return Target(broker, parsed, parsed.name or broker.name(parsed), broker.type_of(parsed))


def client_installed(broker: Broker) -> bool:
    return importlib.util.find_spec(broker.client) is not None


def load_client(broker: Broker) -> None:
    """Import what `broker`'s probe imports on its first read, before a poll's timeout starts: a client
    takes up to a second to import on a busy machine (aiobotocore, nats-py), which a first poll with a short
    timeout spent before it connected, and a refused port was counted `timeout` instead of `connection`."""
    for module in broker.imports or (broker.client,):
        importlib.import_module(module)


def open_probe(url: str) -> Probe:
    """A probe for `url` (not yet connected). Raises ValueError for a bad URL or a missing client."""
    return probe_for(parse(url))


def probe_for(target: Target) -> Probe:
    broker = target.broker
    if not client_installed(broker):
        raise ValueError(f"{broker.queue_type} queues need {broker.client}: pip install 'tasklens[{broker.extra}]'")
    return broker.open(target.url)


def describe_url(url: str, defaults: Any = None) -> dict[str, Any]:
    """What `tasklens check` shows for one queue URL (password masked). Raises ValueError when invalid.

    `defaults` is the Config (for the poll interval, window and threshold not overridden in the URL).
    """
    target = parse(url)
    broker, parsed = target.broker, target.url
    interval = parsed.interval if parsed.interval else getattr(defaults, "queue_poll_interval", 15.0)
    window = parsed.window if parsed.window else getattr(defaults, "queue_trend_window", 300.0)
    return {
        "url": parsed.masked,
        "queue": target.name,
        "queue_type": target.queue_type,
        "reports": ["queue." + r for r in broker.reports(parsed)],
        "interval_seconds": interval,
        "timeout_seconds": parsed.poll_timeout,
        "trend_window_seconds": trend_window(window, interval, getattr(defaults, "queue_poll_share", 1)),
        "backlog_threshold": parsed.threshold if parsed.threshold is not None
        else getattr(defaults, "queue_backlog_threshold", 100.0),
        "client": broker.client if client_installed(broker) else f"missing: pip install 'tasklens[{broker.extra}]'",
    }



async def read_once(url: str, timeout: float = 10.0) -> Reading:
    """One live read (for `tasklens check --live` and tests); always closes the probe."""
    target = parse(url)
    probe = probe_for(target)
    try:
        load_client(target.broker)
        return await asyncio.wait_for(probe.read(), timeout)
    finally:
        await probe.close()
