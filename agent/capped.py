"""A peer's response body within a bound: whole, refused as soon as it passes a limit (the ECS metadata
endpoint, the ECS agent's task-protection answers: `read_capped`; py-spy's pipes: `read_all_capped`; a
line from a blocking socket, such as beanstalkd's replies: `readline_capped`), or only its start, for a while (an exporter's answer, which
its status has decided: `read_at_most`). A broken or hostile endpoint never makes the sidecar hold more."""

from __future__ import annotations

import asyncio

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import aiohttp


async def read_capped(response: aiohttp.ClientResponse, limit: int, too_large: Callable[[], Exception]) -> bytes:
    """The body, however many pieces it arrives in (`content.read(n)` returns only what is buffered), or
    `too_large()` raised as soon as it passes `limit` bytes (declared or read; the connection is closed)."""
    if response.content_length is not None and response.content_length > limit:
        raise too_large()
    return await read_all_capped(response.content.read, limit, too_large)


async def read_all_capped(read: Callable[[int], Awaitable[bytes]], limit: int,
                          too_large: Callable[[], Exception]) -> bytes:
    """All of a stream that `read(n)` takes pieces of until it returns b"" (an HTTP body, a child's pipe),
    or `too_large()` raised as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await read(64 * 1024):
        size += len(chunk)
        if size > limit:
            # the error's traceback holds this frame: without its chunks (an error kept in a local would
            # be a cycle with them, left to the rarely run cyclic collector: 4 MiB per refusal)
            chunks.clear()
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def readline_capped(file: BinaryIO, limit: int, too_large: Callable[[], Exception]) -> bytes:
    """One line from a blocking reader, with its line end, or `too_large()` raised once `limit` bytes came
    without one: a peer that never ends a line is refused at the limit, not at the timeout."""
    line = file.readline(limit + 1)
    if len(line) > limit:
        raise too_large()
    return line


async def read_at_most(response: aiohttp.ClientResponse, limit: int, seconds: float) -> bytes:
    """The start of a response body, without holding more than `limit` bytes of a hostile one.

    Best effort: what arrived within `seconds` (or before the request's own timeout, or before the
    connection broke). Never raises: the caller has its answer in the status already.
    """
    import aiohttp

    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            while size < limit:
                chunk = await response.content.read(limit - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    return b"".join(chunks)
