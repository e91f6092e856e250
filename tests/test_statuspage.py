"""The status page: its history (bounded), its data endpoint, and the page in a real headless Chromium.

The browser tests drive Debian's Chromium through its chromedriver (selenium), against the page
served on loopback by the same aiohttp routes the sidecar adds. They skip, saying why, where
Chromium is not installed (scripts/system-deps.sh installs it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.hub import Hub
from agent.identity import Identity
from agent.http import json_text
from agent.model import Batch, Kind, Points, Sample
from agent.statuspage import (
    CSP,
    MAX_CONTAINERS,
    MAX_POINTS,
    MAX_QUEUES,
    WATCHING,
    PageHistory,
    Ring,
    add_routes,
    page_html,
)
from tests.support import serve_app
from tests.health_support import HOSTILE, MIB, Clock, feed_page

IDENTITY = Identity(service="orders-worker", env="prod", ecs_cluster="prod", task_family="orders",
                    task_revision="7", task_id="67cd8a22b533459696d4ccab5278e009")
SCREENSHOTS = os.environ.get("TASKLENS_SCREENSHOT_DIR")  # docs/ to refresh the README's pictures


def components() -> dict[str, Any]:
    return {"ecs": {"ready": True, "last_error": None, "consecutive_failures": 0},
            "queue:orders": {"last_error": "timeout <b>after 5 s</b>", "consecutive_failures": 2},
            "statsd": {"packets": 10}}


def fed(polls: int = 181) -> tuple[PageHistory, Clock]:
    clock = Clock()
    page = PageHistory(Hub(IDENTITY), clock=clock)
    feed_page(page, clock, polls=polls)
    page.errors.handle(logging.makeLogRecord({"name": "tasklens.queue", "levelno": logging.WARNING, "levelname": "WARNING",
                                              "msg": "queue %s: poll failed", "args": (HOSTILE,), "created": clock.now}))
    return page, clock


# --- the history ------------------------------------------------------------------------------------


def test_ring_keeps_the_last_points_and_gaps():
    r = Ring(4, spacing=0.0)
    for t in range(6):
        r.add(float(t), None if t == 4 else float(t * 10))
    assert r.points() == [[2.0, 20.0], [3.0, 30.0], [4.0, None], [5.0, 50.0]]


def test_ring_thins_out_polls_faster_than_its_spacing():
    r = Ring(10, spacing=10.0)
    for t in range(100):
        r.add(float(t), 1.0)
    assert [t for t, _ in r.points()] == [9.0, 19.0, 29.0, 39.0, 49.0, 59.0, 69.0, 79.0, 89.0, 99.0]


def test_snapshot_has_the_fixture_numbers():
    page, _ = fed()
    snap = page.snapshot(components())
    dd = next(c for c in snap["containers"] if c["name"] == "dd-agent")
    # 181 polls of the leaking dd-agent (tests/health_support.py): 156,966,912 B + 180 x 2 MiB at the end
    assert dd["working_set_bytes"][-1][1] == 156_966_912 + 180 * 2 * MIB
    assert dd["limit_bytes"] == 3072 * MIB
    assert dd["leak_suspected"] == 1
    assert dd["time_to_limit_seconds"] == pytest.approx((3072 * MIB - (156_966_912 + 360 * MIB)) / (2 * MIB / 10))
    assert len(dd["working_set_bytes"]) == 181
    assert dd["cpu_percent"][0][1] is None  # the first poll has no rate: missing, not 0
    assert dd["cpu_percent"][-1][1] == pytest.approx(20 + 0.2 * 180)
    (queue,) = snap["queues"]
    assert queue["name"] == "orders" and queue["depth"][-1][1] == 900 - 3 * 180
    assert queue["drain_seconds"] == pytest.approx(360 / 0.3)
    assert snap["components"]["queue:orders"] == {"ok": False, "error": "timeout <b>after 5 s</b>"}
    assert snap["components"]["ecs"] == {"ok": True, "error": None}


def test_statsd_is_ranked_only_while_somebody_watches():
    page, clock = fed(polls=3)
    assert page.statsd == []  # nobody fetched the page: the flush was not even looked at
    page.snapshot(components())
    page.accept(Batch("statsd", [Sample("a", 10.0, Kind.COUNT, interval=10.0),
                                 Sample("b", 100.0, Kind.COUNT, interval=10.0)]))
    assert [m["name"] for m in page.statsd] == ["b", "a"]
    assert page.statsd[0]["per_second"] == 10.0
    clock.now += WATCHING + 1
    page.accept(Batch("statsd", [Sample("c", 1e6, Kind.COUNT, interval=10.0)]))
    assert [m["name"] for m in page.statsd] == ["b", "a"]  # stopped looking


def test_memory_is_bounded_whatever_the_number_of_containers_and_queues():
    clock = Clock()
    page = PageHistory(Hub(IDENTITY), clock=clock)

    def flood(n: int) -> None:
        for i in range(n):
            clock.now += 10
            page.accept(Batch("ecs", [Sample("ecs.container.memory.working_set_bytes", float(i),
                                             tags=(("container_name", f"c{j}-{i % 3}"),)) for j in range(200)]))
            page.accept(Batch(f"queue:q{i}", [Sample("queue.depth", 1.0, tags=(("queue", f"q{i}"),))]))

    flood(MAX_POINTS)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    flood(5 * MAX_POINTS)  # five times as many polls, thousands more names
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert len(page.containers) == MAX_CONTAINERS and len(page.queues) == MAX_QUEUES
    assert page.dropped > 0
    assert grown < 64 * 1024, grown


# --- over HTTP ---------------------------------------------------------------------------------------


async def serve(page: PageHistory) -> tuple[web.AppRunner, str]:
    app = web.Application()
    add_routes(app, page, components)
    return await serve_app(app)


def strict_json(text: str) -> Any:
    """json.loads refusing what JSON.parse refuses: NaN, Infinity, -Infinity."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["hot", "cold", "x"]),
                          st.one_of(st.floats(), st.sampled_from([1.7e308, -1.7e308, math.inf, math.nan])),
                          st.sampled_from([Kind.COUNT, Kind.HISTOGRAM, Kind.GAUGE]), st.sampled_from([0.5, 1.0, 10.0])),
                max_size=12))
def test_the_data_is_json_whatever_the_numbers(samples: list[tuple[str, float, Kind, float]]) -> None:
    """Sums that overflow (twelve counters of 1.7e308) and non-finite values reach the page's data as
    null, never as `Infinity`, which makes the whole document unreadable to the page."""
    page, _ = fed(polls=3)
    page.snapshot(components())  # somebody watches: StatsD is ranked
    page.accept(Batch("statsd", [Sample(name, Points((v,), (1.0,)) if kind is Kind.HISTOGRAM else v, kind,
                                        (("k", str(n)),), interval=interval)
                                 for n, (name, v, kind, interval) in enumerate(samples)]))
    data = strict_json(json_text(page.snapshot(components())))
    assert all(m["per_second"] is None or math.isfinite(m["per_second"]) for m in data["statsd"]["busiest"])


def test_twelve_huge_counters_of_one_name_are_null_per_second():
    page, _ = fed(polls=3)
    page.snapshot(components())
    page.accept(Batch("statsd", [Sample("hot", 1.7e308, Kind.COUNT, (("k", str(n)),), interval=10.0) for n in range(12)]))
    busiest = strict_json(json_text(page.snapshot(components())))["statsd"]["busiest"]
    assert busiest[0] == {"name": "hot", "per_second": None}


async def test_page_and_data_over_http():
    import aiohttp

    page, _ = fed(polls=5)
    runner, url = await serve(page)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/") as r:
                body = await r.read()
                assert r.status == 200 and r.content_type == "text/html"
                assert r.headers["Content-Security-Policy"] == CSP
            async with session.get(url + "/status/history") as r:
                data = await r.json()
                assert r.headers["Content-Security-Policy"] == CSP
        assert body == page_html()
        assert len(body) < 16 * 1024  # self-contained and small: no asset to fetch
        assert b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b"") and b"https://" not in body
        assert HOSTILE in {c["name"] for c in data["containers"]}  # data, for the page to show as text
    finally:
        await runner.cleanup()


# --- in a real browser -------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER) or sys.platform != "linux",
                             reason="needs Debian's chromium and chromium-driver (scripts/system-deps.sh)")


class Browser:
    """Headless Chromium through chromedriver; every console message and request is recorded."""

    def __init__(self, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM  # type: ignore[assignment]
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def viewport(self, width: int, height: int, mobile: bool) -> None:
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def requests(self) -> list[str]:
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def console(self) -> list[dict[str, Any]]:
        return list(self.driver.get_log("browser"))

    def screenshot(self, path: Path, width: int) -> None:
        height = int(self.js("return document.documentElement.scrollHeight"))
        self.viewport(width, height, mobile=width < 600)
        path.write_bytes(self.driver.get_screenshot_as_png())

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture
async def chromium(tmp_path):
    b = await asyncio.to_thread(Browser, tmp_path / "profile")
    yield b
    await asyncio.to_thread(b.close)


async def wait_js(b: Browser, script: str, what: str, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(b.js, script)
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


CARD = """return [...document.querySelectorAll('.container')].find(c => c.dataset.name === %s)"""


def card_text(name: str, cls: str) -> str:
    return (CARD % json.dumps(name)) + f".querySelector('b.{cls}').textContent"


@browser
@pytest.mark.parametrize("width,height,mobile", [(390, 844, True), (1280, 900, False)], ids=["phone", "desktop"])
async def test_the_page_in_chromium(chromium: Browser, tmp_path, width, height, mobile):
    page, clock = fed()
    page.snapshot(components())  # somebody is watching: the next StatsD flush gets ranked
    page.accept(Batch("statsd", [Sample("jobs.done", 500.0, Kind.COUNT, interval=10.0),
                                 Sample(HOSTILE, 50.0, Kind.COUNT, interval=10.0)]))
    runner, url = await serve(page)
    try:
        await asyncio.to_thread(chromium.viewport, width, height, mobile)
        await asyncio.to_thread(chromium.driver.get, url + "/?refresh=1")
        await wait_js(chromium, "return document.body.dataset.updated", "the first render")

        # the charts are drawn, with every poll as a point; the numbers are the fixture's
        points = await asyncio.to_thread(chromium.js, "return Object.fromEntries([...document.querySelectorAll"
                                         "('svg[data-series]')].map(s => [s.dataset.series, +s.dataset.points]))")
        assert points["dd-agent memory"] == 181 and points["dd-agent cpu"] == 180  # the first has no rate
        assert points["orders depth"] == 181
        assert points["task cpu"] == 180
        assert await asyncio.to_thread(chromium.js, card_text("dd-agent", "mem")) == "510 MiB / 3.0 GiB"
        assert await asyncio.to_thread(chromium.js, card_text("dd-agent", "ttl")) == "3.6 h"  # 12,812 s
        assert await asyncio.to_thread(chromium.js, card_text("dd-agent", "cpu")) == "56.0 %"
        # a hostile container name and StatsD name are shown as text: no element, no script ran
        assert await asyncio.to_thread(chromium.js, (CARD % json.dumps(HOSTILE)) + ".querySelector('h3 bdi').firstChild.data") == HOSTILE
        assert await asyncio.to_thread(chromium.js, "return document.querySelectorAll('img').length") == 0
        assert await asyncio.to_thread(chromium.js, "return window.__pwned === undefined")
        statsd = await asyncio.to_thread(chromium.js, "return [...document.querySelectorAll('#statsd td')].map(t => t.textContent)")
        assert statsd == ["jobs.done", "50/s", HOSTILE, "5/s"]
        procs = await asyncio.to_thread(chromium.js, "return [...document.querySelectorAll('#processes td')].map(t => t.textContent)")
        assert procs == ["python:worker.py", "45 % vCPU", "480 MiB", "agent", "2 % vCPU", "60 MiB"]
        errors = await asyncio.to_thread(chromium.js, "return [...document.querySelectorAll('#errors td')].map(t => t.textContent)")
        assert errors[1] == f"WARNING tasklens.queue: queue {HOSTILE}: poll failed"
        # missing numbers are shown as missing: apmtest-ping has no countdown
        assert await asyncio.to_thread(chromium.js, card_text(HOSTILE, "ttl")) == "–"

        if SCREENSHOTS:
            await asyncio.to_thread(chromium.screenshot, Path(SCREENSHOTS) / f"status-page-{'phone' if mobile else 'desktop'}.png", width)
            await asyncio.to_thread(chromium.viewport, width, height, mobile)
        # readable on a phone: nothing wider than the screen
        assert await asyncio.to_thread(chromium.js, "return document.documentElement.scrollWidth") <= width

        # it updates by itself when the data changes
        before = await asyncio.to_thread(chromium.js, "return document.body.dataset.updated")
        feed_page(page, clock, polls=1, depth_start=12345)
        await wait_js(chromium, f"return document.body.dataset.updated !== {json.dumps(before)}", "a refresh")
        q = "return document.querySelector('.queue b.depth').textContent"
        assert await asyncio.to_thread(chromium.js, q) == "12,345"

        errors = [m for m in await asyncio.to_thread(chromium.console) if m["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        # the browser's own new tab loads chrome:// and data: resources (no network): the rest must be ours
        requests = [u for u in await asyncio.to_thread(chromium.requests) if not u.startswith(("chrome", "about:", "data:"))]
        assert requests and all(u.startswith(url + "/") for u in requests), requests
        assert {u.removeprefix(url) for u in requests} == {"/?refresh=1", "/status/history"}
    finally:
        await runner.cleanup()


async def test_the_sidecar_serves_the_page(tmp_path):
    """The real runtime (local mode): `GET /` and its data, with the sidecar's own container in it."""
    import aiohttp

    from agent.config import Config
    from agent.runtime import Runtime
    from tests.support import free_port

    port = free_port()
    runtime = Runtime(Config(http_addr=("127.0.0.1", port), statsd_addr=None, poll_interval=0.2), environ={})
    shutdown = asyncio.Event()
    serving = asyncio.create_task(runtime.serve(shutdown))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            data: dict[str, Any] = {}
            while not data.get("containers"):
                assert loop.time() < deadline, "the page's data never showed a container"
                try:
                    async with session.get(base + "/status/history") as r:
                        data = await r.json()
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            async with session.get(base + "/") as r:
                assert r.status == 200 and (await r.read()) == page_html()
        (container,) = data["containers"]
        assert container["working_set_bytes"][-1][1] > 0
        assert container["restarts"] == 0 and container["oom_kills"] == 0
        assert data["components"]["local"]["ok"] is True
    finally:
        shutdown.set()
        assert await serving == 0


RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: what follows it, to the end of its paragraph or isolate, is reversed


class BidiHistory:
    """The page's data with a U+202E in every piece of text that comes from outside the sidecar."""

    NOW = 1_700_000_000.0
    TEXTS = {"service": "s" + RLO + "vc", "cluster": "c" + RLO + "lu", "container": "a" + RLO + "evil",
             "queue": "q" + RLO + "evil", "metric": "m" + RLO + "evil", "process": "p" + RLO + "evil",
             "component": "queue:q" + RLO + "evil", "component error": "e" + RLO + "rr",
             "error": "queue q" + RLO + "evil: poll failed"}

    def snapshot(self, components: dict[str, Any]) -> dict[str, Any]:
        t, now = self.TEXTS, self.NOW
        series = [[now - 10, 5.0], [now, 6.0]]
        return {
            "generated_at": now, "history_seconds": 3600,
            "identity": {"service": t["service"], "ecs_cluster": t["cluster"], "task_family": "orders", "env": "prod"},
            "task": {"cpu_percent": series, "working_set_bytes": series},
            "containers": [{"name": t["container"], "cpu_percent": series, "working_set_bytes": series,
                            "limit_bytes": 100.0, "running": 0, "oom_kills": 2}],
            "queues": [{"name": t["queue"], "depth": series, "backing_up": 1}],
            "statsd": {"busiest": [{"name": t["metric"], "per_second": 3.0}], "at": now},
            "processes": [{"name": t["process"], "cpu_vcpus": 0.1, "rss_bytes": 1024.0}],
            "errors": [{"time": now, "level": "WARNING", "logger": "tasklens.queue", "message": t["error"]}],
            "components": {t["component"]: {"ok": False, "error": t["component error"]}},
        }


# the pieces (text nodes and elements) of `e`, in document order, each drawn right of the one before
IN_ORDER = """
const boxes = [...arguments[0].childNodes].map(n => {
  if (n.nodeType !== Node.TEXT_NODE) return n.getBoundingClientRect();
  const r = document.createRange(); r.selectNodeContents(n); return r.getBoundingClientRect();
}).filter(b => b.width > 0);
// (on one line: a wrapped line would start left of the one before)
return boxes.length > 1 && boxes.every(b => b.top < boxes[0].bottom && b.bottom > boxes[0].top)
  && boxes.every((b, i) => i === 0 || b.left >= boxes[i - 1].right - 0.5);
"""
# for each text node whose text is one of these, the unicode-bidi of the element holding it, when it holds
# nothing else (the browser's own isolation of an h3 or a td does not keep a badge next to it in place)
ISOLATION = """
const wanted = new Set(arguments[0]), found = {};
const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let n = walk.nextNode(); n; n = walk.nextNode()) {
  const e = n.parentElement;
  if (wanted.has(n.data))
    (found[n.data] = found[n.data] || []).push(e.textContent === n.data ? getComputedStyle(e).unicodeBidi : "shared");
}
return found;
"""


@browser
async def test_direction_controls_in_names_stay_in_them(chromium: Browser):
    """A U+202E in a container name reversed the card's heading to its end: the badges were drawn inside
    the name ("a", the badges, "live"). Every piece of text from outside (names of containers, queues,
    metrics, processes, components; the identity; errors) is held by a bidi-isolated element, so the
    labels, badges and values around it stay in place."""
    app = web.Application()
    add_routes(app, BidiHistory(), components)  # type: ignore[arg-type]
    runner, url = await serve_app(app)
    try:
        await asyncio.to_thread(chromium.viewport, 1280, 900, False)
        await asyncio.to_thread(chromium.driver.get, url + "/")
        await wait_js(chromium, "return document.body.dataset.updated", "the first render")
        for where in (".container h3", ".queue h3", "#ident", "#title"):
            element = await asyncio.to_thread(chromium.driver.find_element, "css selector", where)
            assert await asyncio.to_thread(chromium.driver.execute_script, IN_ORDER, element), where
        texts = list(BidiHistory.TEXTS.values())
        isolation = await asyncio.to_thread(chromium.driver.execute_script, ISOLATION, texts)
        assert isolation == {text: ["isolate"] for text in texts}
        badges = await asyncio.to_thread(chromium.js, "return [...document.querySelectorAll('.container h3 .badge')]"
                                                      ".map(b => b.textContent)")
        assert badges == ["stopped", "OOM killed ×2"]
        errors = [m for m in await asyncio.to_thread(chromium.console) if m["level"] in ("SEVERE", "WARNING")]
        assert errors == []
    finally:
        await runner.cleanup()


@browser
async def test_a_gap_now_is_shown_as_missing_not_as_the_last_value(chromium: Browser):
    page, clock = fed(polls=3)
    clock.now += 10
    page.accept(Batch("queue:orders", [], snapshot=True))  # the queue's poll failed
    runner, url = await serve(page)
    try:
        await asyncio.to_thread(chromium.driver.get, url + "/")
        await wait_js(chromium, "return document.body.dataset.updated", "the first render")
        assert await asyncio.to_thread(chromium.js, "return document.querySelector('.queue b.depth').textContent") == "–"
        points = await asyncio.to_thread(chromium.js, "return +document.querySelector('svg[data-series=\"orders depth\"]').dataset.points")
        assert points == 3  # the three polls that answered; the gap is not drawn
    finally:
        await runner.cleanup()


async def test_a_history_shorter_than_three_polls_is_widened_to_three_of_the_slowest_source():
    """A page that keeps less history than 3 polls would chart one point or none: the history is
    widened as the trend windows are, to 3 polls of the ECS poller and of each queue (under shared
    polling, 3 of the task's own polls), and `/status` says which history is kept."""
    from agent.config import Config
    from agent.runtime import Runtime

    config = Config(statsd_addr=None, poll_interval=100.0, status_history=60.0, queue_poll_share=2,
                    queues=("redis://127.0.0.1:6379/0?list=tasklens_page_window&interval=200",))
    runtime = Runtime(config, environ={})
    await runtime.build()
    assert runtime.page is not None and runtime.page.history_seconds == 3 * 200 * 2
    assert runtime.status()["statuspage"]["history_seconds"] == 1200
    runtime = Runtime(Config(statsd_addr=None, poll_interval=100.0, status_history=60.0), environ={})
    await runtime.build()
    assert runtime.page is not None and runtime.page.history_seconds == 300
    runtime = Runtime(Config(statsd_addr=None, poll_interval=10.0, status_history=7200.0), environ={})
    await runtime.build()
    assert runtime.page is not None and runtime.page.history_seconds == 7200  # wide enough: as set

    # at polls 100 s apart, what the page draws (the points of the last `history_seconds`) is 3 points
    clock = Clock()
    page = PageHistory(Hub(IDENTITY), history_seconds=300.0, clock=clock)
    feed_page(page, clock, polls=10, step=100.0)
    data = page.snapshot(components())
    drawn = [t for t, _ in data["task"]["working_set_bytes"] if t >= data["generated_at"] - data["history_seconds"]]
    assert len(drawn) >= 3  # where a history of the 60 s set draws 1


async def test_status_shows_the_health_windows_in_use():
    """`check` and `/status` name the same windows, the leak forecast's widened to 3 ECS polls."""
    from agent.config import Config
    from agent.health import settings as health_settings
    from agent.runtime import Runtime

    config = Config(statsd_addr=None, poll_interval=900.0, memory_trend_window=60.0, status_page=False)
    runtime = Runtime(config, environ={})
    await runtime.build()
    shown = runtime.status()["local"]["health"]
    assert shown == health_settings(config) and shown["memory_trend_window_seconds"] == 2700


@settings(max_examples=60, deadline=None)
@given(poll=st.floats(0.5, 3600), history=st.floats(60, 86400), jitter=st.lists(st.floats(-0.1, 0.1), min_size=1, max_size=7))
def test_the_page_charts_exactly_its_history_whatever_the_poll(poll: float, history: float, jitter: list[float]):
    """What `/status/history` holds is the last `history_seconds` (the setting, widened to 3 polls),
    covered from end to end, however fast or slow the polls come (+-10 % jitter): never older points,
    never a span cut short by thinning, never more than MAX_POINTS points."""
    from types import SimpleNamespace

    from agent.statuspage import status_window

    window = status_window(SimpleNamespace(status_history=history, poll_interval=poll))
    clock = Clock()
    page = PageHistory(Hub(IDENTITY), history_seconds=window, clock=clock)
    start = clock.now
    polls = 0
    while clock.now - start < 2 * window and polls < 20_000:
        clock.now += poll * (1 + jitter[polls % len(jitter)])
        polls += 1
        page.accept(Batch("local", [Sample("ecs.task.memory.working_set_bytes", float(polls))]))
    if clock.now - start < 2 * window:
        return  # (polls far faster than the history needs: the run is long enough to say nothing new)
    drawn = page.snapshot({})["task"]["working_set_bytes"]
    times = [t for t, _ in drawn]
    assert len(times) <= MAX_POINTS and times == sorted(times) and times[-1] == round(clock.now, 1)
    assert times[0] >= round(clock.now - window, 1) - 0.1  # nothing older than the history
    # the oldest point is within one thinning bucket and one poll of the history's start
    assert times[0] <= clock.now - window + window / (MAX_POINTS - 1) + 1.1 * poll + 0.1
    assert len(times) >= 3


def test_a_clock_stepped_back_starts_the_chart_afresh():
    r = Ring(10, spacing=10.0)
    for t in (1000.0, 1010.0, 1020.0):
        r.add(t, 1.0)
    r.add(1015.0, 2.0)  # back by less than a bucket: a late point, dropped
    assert r.points() == [[1000.0, 1.0], [1010.0, 1.0], [1020.0, 1.0]]
    r.add(400.0, 3.0)  # back by ten minutes: the old points' times are the old clock's
    r.add(410.0, 4.0)
    assert r.points() == [[400.0, 3.0], [410.0, 4.0]]
    assert r.points(since=405.0) == [[410.0, 4.0]]


def test_a_component_that_reports_no_failure_is_ok_on_the_page():
    """StatsD, the heartbeat, the sinks that report no failure read ok, not "?"; a failure still shows."""
    from agent.statuspage import _health

    assert _health({"packets": 10, "kernel_drops": 0, "last_flush": None}) == {"ok": True, "error": None}
    assert _health({"beats": 3}) == {"ok": True, "error": None}
    assert _health({"processes_seen": 4, "last_error": None}) == {"ok": True, "error": None}
    assert _health({"last_error": ""}) == {"ok": True, "error": None}
    assert _health({"processes_seen": 0, "last_error": "PermissionError()"}) == {"ok": False, "error": "PermissionError()"}
    assert _health({"consecutive_failures": 2, "last_error": "http_500"}) == {"ok": False, "error": "http_500"}
    assert _health({"ready": False, "last_error": None}) == {"ok": False, "error": None}
    assert _health(None) == {"ok": None}
    # what a component that runs but cannot do its work says: not ok
    assert _health({"problem": "profiler: py-spy not found", "last_error": None}) == {
        "ok": False, "error": "profiler: py-spy not found"}
    assert _health({"loop_detected": True, "last_error": "loop: lines come back"}) == {
        "ok": False, "error": "loop: lines come back"}


async def test_the_page_reads_a_profiler_that_cannot_run_as_failing() -> None:
    """A diff review's find: the real profiler reports py-spy missing in `problem`, read as ok."""
    from agent.config import Config
    from agent.statuspage import _health
    from integrations.profilers.pyspy import PySpyProfiler

    profiler = PySpyProfiler(Config(pyroscope_url="http://127.0.0.1:9"), Hub(IDENTITY), py_spy="/nonexistent/py-spy")
    stop = asyncio.Event()
    running = asyncio.create_task(profiler.run(stop))
    for _ in range(100):
        if profiler.status()["problem"]:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(running, 10)
    shown = _health(profiler.status())
    assert shown["ok"] is False and "py-spy" in shown["error"], shown
