"""AWS SQS: one `GetQueueAttributes` call per poll; the oldest age from CloudWatch when asked.

    sqs://orders?region=eu-west-1                                   by name (+ sqs:GetQueueUrl, once)
    sqs://sqs.eu-west-1.amazonaws.com/123456789012/orders           by queue URL (region from the host)
    sqs://orders?region=us-east-1&endpoint=http://127.0.0.1:4566    an SQS-compatible endpoint
    sqs://orders?region=eu-west-1&cloudwatch_age=true               + ApproximateAgeOfOldestMessage

Credentials come from the standard AWS chain (the task role on ECS). Never `ReceiveMessage`: a peek
would raise receive counts and could move messages to a dead-letter queue. The counts are
approximate and settle within about a minute. CloudWatch publishes SQS metrics once a minute, so
its value is fetched at most once per `CLOUDWATCH_PERIOD` and reused in between (each call costs), never
past a failed poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from agent.urlmask import mask_url
from integrations.queues.base import Broker, ProbeError, QueueURL, Reading, flag

ATTRIBUTES = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
              "ApproximateNumberOfMessagesDelayed")
CLOUDWATCH_PERIOD = 60.0
CLOUDWATCH_LOOKBACK = timedelta(minutes=10)
DEFAULT_REGION = "us-east-1"


def location(url: QueueURL) -> tuple[str, str | None, str]:
    """(queue name, queue URL when given in full, region). The region: `?region=`, else the one a queue
    URL's host names, else the task's (`AWS_REGION`, `AWS_DEFAULT_REGION`: ECS sets them), else us-east-1."""
    parts = url.parts
    if "@" in parts.netloc:  # (`password_env=` puts its password there): it would be the queue's name
        raise ValueError("an SQS URL takes no user name or password (password_env= neither): the credentials "
                         "come from the AWS chain (the task role)")
    path = parts.path.strip("/")
    host = parts.hostname or ""
    if path:  # sqs://<sqs host>/<account>/<name>
        name = path.rsplit("/", 1)[-1]
        endpoint = url.params.get("endpoint")
        base = endpoint.rstrip("/") if endpoint else f"https://{parts.netloc}"
        return name, f"{base}/{path}", url.params.get("region") or region_of_host(host) or default_region()
    if not host:
        raise ValueError("an SQS URL names the queue: sqs://<name>?region=... or sqs://<sqs host>/<account>/<name>")
    return parts.netloc, None, url.params.get("region") or default_region()


ENDPOINTS = ("endpoint", "cloudwatch_endpoint")


def check(url: QueueURL) -> None:
    """What botocore would refuse at every poll, refused at start: a region that is no host label, an
    endpoint that is no http(s) URL with a host (botocore's own tests where it has them: they decide)."""
    import importlib.util

    region = location(url)[2]
    has_botocore = importlib.util.find_spec("botocore") is not None
    if has_botocore:
        from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url, validate_region_name
        try:
            validate_region_name(region)
        except ValueError:
            raise ValueError(f"region {region[:64]!r} is no AWS region name (a host label: letters, digits, "
                             "'-')") from None
    for key in ENDPOINTS:
        endpoint = url.params.get(key)
        if not endpoint:  # empty: the default, as the probe reads it
            continue
        scheme = endpoint.partition("://")[0].lower()
        usable = scheme in ("http", "https") and (not has_botocore or bool(
            is_valid_endpoint_url(endpoint) or is_valid_ipv6_endpoint_url(endpoint)))
        if not usable:
            raise ValueError(f"{key}={mask_url(endpoint)[:200]!r}: expected an http:// or https:// URL with a host")


def default_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")  # eu-west-1, us-gov-west-1, us-iso-east-1, cn-north-1


def region_of_host(host: str) -> str | None:
    """The region an SQS host names, the first label shaped like one: `sqs.eu-west-1.amazonaws.com`,
    `eu-west-1.queue.amazonaws.com`, `sqs-fips.us-gov-west-1.amazonaws.com`,
    `vpce-0a1b-c2d3.sqs.eu-west-1.vpce.amazonaws.com`, `sqs.eu-west-1.api.aws`."""
    return next((label for label in host.lower().split(".")[:-1] if REGION.fullmatch(label)), None)


def reading_of(attributes: dict[str, str]) -> Reading:
    # whole numbers as text: int() keeps them exact for `Reading.checked` (float() would round past 2**53)
    return Reading(depth=int(attributes["ApproximateNumberOfMessages"]),
                   in_flight=int(attributes["ApproximateNumberOfMessagesNotVisible"]),
                   delayed=int(attributes["ApproximateNumberOfMessagesDelayed"]))


def latest_maximum(reply: dict[str, Any]) -> float | None:
    points = reply.get("Datapoints") or []
    if not points:
        return None
    return float(max(points, key=lambda p: p["Timestamp"])["Maximum"])


def _error(exc: Exception) -> Exception:
    from botocore import exceptions as e

    if isinstance(exc, e.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
            return ProbeError("not_found", str(exc))
        if code in ("AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "SignatureDoesNotMatch",
                    "ExpiredToken", "UnrecognizedClientException"):
            return ProbeError("auth", str(exc))
        return ProbeError("error", str(exc))
    if isinstance(exc, (e.NoCredentialsError, e.PartialCredentialsError)):
        return ProbeError("auth", str(exc))
    if isinstance(exc, (e.ConnectTimeoutError, e.ReadTimeoutError)):
        return ProbeError("timeout", str(exc))
    if isinstance(exc, (e.EndpointConnectionError, e.ConnectionClosedError)):
        return ProbeError("connection", str(exc))
    return exc


# (event loop, aiobotocore session): see shared_session
_session: tuple[asyncio.AbstractEventLoop, Any] | None = None


def shared_session() -> Any:
    """The aiobotocore session every SQS probe of this event loop makes its clients from (in the sidecar,
    one per process). A session loads and caches the service models, endpoint rules and credential chain,
    megabytes per session, much of it in reference cycles: one per queue costs that per queue, and
    one per reconnect left it as garbage after every failed poll, which only a full collection frees (those
    are rare: agent/memory.py). Per loop, as its clients' locks are bound to the loop that first awaits them."""
    global _session
    from aiobotocore.session import get_session

    loop = asyncio.get_running_loop()
    if _session is None or _session[0] is not loop:
        _session = (loop, get_session())
    return _session[1]


class SQSProbe:
    def __init__(self, url: QueueURL) -> None:
        self.url = url
        self.queue, self.queue_url, self.region = location(url)
        self.endpoint = url.params.get("endpoint") or None
        self.cloudwatch_age = flag(url, "cloudwatch_age")
        self.account = url.params.get("account") or None
        self._stack: contextlib.AsyncExitStack | None = None
        self._sqs: Any = None
        self._cloudwatch: Any = None
        self._age: tuple[float, float | None] | None = None  # (fetched at, value)

    async def _connect(self) -> None:
        from aiobotocore.config import AioConfig

        timeout = self.url.poll_timeout
        # our poll loop is the retry; botocore's own retries would only stretch a failed poll
        config = AioConfig(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1})
        session = shared_session()  # a reconnect makes new clients, never a new session
        stack = contextlib.AsyncExitStack()
        try:
            self._sqs = await stack.enter_async_context(session.create_client(
                "sqs", region_name=self.region, endpoint_url=self.endpoint, config=config))
            if self.cloudwatch_age:
                self._cloudwatch = await stack.enter_async_context(session.create_client(
                    "cloudwatch", region_name=self.region, config=config,
                    endpoint_url=self.url.params.get("cloudwatch_endpoint") or self.endpoint))
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def read(self) -> Reading:
        try:
            if self._stack is None:
                await self._connect()
            if self.queue_url is None:
                args = {"QueueName": self.queue}
                if self.account:
                    args["QueueOwnerAWSAccountId"] = self.account
                self.queue_url = (await self._sqs.get_queue_url(**args))["QueueUrl"]
            reply = await self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=list(ATTRIBUTES))
            reading = reading_of(reply["Attributes"])
            if self.cloudwatch_age:
                reading = replace(reading, oldest_age_seconds=await self._oldest_age())
            return reading
        except Exception as exc:
            raise _error(exc) from exc

    async def _oldest_age(self) -> float | None:
        now = time.monotonic()
        if self._age is not None and now - self._age[0] < CLOUDWATCH_PERIOD:
            return self._age[1]
        # end one period ahead so that the current, still open minute is included
        end = datetime.now(timezone.utc) + timedelta(seconds=CLOUDWATCH_PERIOD)
        reply = await self._cloudwatch.get_metric_statistics(
            Namespace="AWS/SQS", MetricName="ApproximateAgeOfOldestMessage",
            Dimensions=[{"Name": "QueueName", "Value": self.queue}],
            StartTime=end - CLOUDWATCH_LOOKBACK, EndTime=end, Period=int(CLOUDWATCH_PERIOD), Statistics=["Maximum"])
        self._age = (now, latest_maximum(reply))
        return self._age[1]

    async def close(self) -> None:
        # after a failure nothing read before it is reused: the queue may be another one of the same name
        self._age = None
        stack, self._stack, self._sqs, self._cloudwatch = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()


def _reports(url: QueueURL) -> tuple[str, ...]:
    base = ("depth", "in_flight", "delayed")
    return base + ("oldest_age_seconds",) if flag(url, "cloudwatch_age") else base


BROKER = Broker(
    queue_type="sqs",
    client="aiobotocore",
    extra="sqs",
    params=frozenset({"region", "endpoint", "account", "cloudwatch_age", "cloudwatch_endpoint"}),
    name=lambda url: location(url)[0],
    reports=_reports,
    open=SQSProbe,
    check=check,
    imports=("aiobotocore.session", "aiobotocore.config", "botocore.exceptions"),
)
