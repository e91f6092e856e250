"""`/?refresh=N` with a large N never makes the page poll `/status/history` back to back.

docs/health.md: "It refreshes every 10 s (`/?refresh=N` for another interval)". The page multiplied N by
1000 and handed it to setInterval, which browsers keep as a 32-bit signed integer: past 2,147,483 s (or
`refresh=Infinity`) the delay overflowed and the page fetched the data as fast as timers fire, each
snapshot built on the sidecar's event loop. The interval is now 1 s to a day, and the next fetch is
scheduled when the last one ends.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.test_statuspage import Browser, browser, chromium, fed, serve, wait_js  # noqa: F401 - fixture


def counted_page() -> tuple[object, list[int]]:
    """A fed history whose snapshots are counted (in the list's one item)."""
    page, _ = fed(polls=3)
    made = [0]
    snapshot = page.snapshot

    def counted(components):
        made[0] += 1
        return snapshot(components)

    page.snapshot = counted  # type: ignore[method-assign]
    return page, made


@browser
@pytest.mark.parametrize("refresh", ["3000000", "Infinity"])  # ~35 days ("never, really"), and infinity
async def test_a_long_refresh_interval_does_not_poll_in_a_loop(chromium: Browser, refresh: str):  # noqa: F811
    page, made = counted_page()
    runner, url = await serve(page)
    try:
        await asyncio.to_thread(chromium.driver.get, f"{url}/?refresh={refresh}")
        await wait_js(chromium, "return document.body.dataset.updated", "the first render")
        await asyncio.sleep(2.0)
        # the first render, then the next one in 35 days (or never): not one every few milliseconds
        assert made[0] <= 2, f"{made[0]} fetches of /status/history in about 2 s with ?refresh={refresh}"
    finally:
        await runner.cleanup()


async def test_many_clients_at_once_cost_one_snapshot_a_second():
    """However many tabs (or scripts) ask at once, the history is snapshotted on the event loop once a
    second; each of them gets the same, valid JSON."""
    import aiohttp

    from tests.test_statuspage import strict_json

    page, made = counted_page()
    runner, url = await serve(page)
    try:
        async with aiohttp.ClientSession() as session:
            async def get() -> str:
                async with session.get(f"{url}/status/history") as r:
                    assert r.status == 200 and r.content_type == "application/json"
                    return await r.text()

            bodies = await asyncio.gather(*(get() for _ in range(50)))
        assert made[0] == 1 and len(set(bodies)) == 1
        assert strict_json(bodies[0])["generated_at"]
    finally:
        await runner.cleanup()
