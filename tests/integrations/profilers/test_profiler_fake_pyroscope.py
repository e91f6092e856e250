"""The local Pyroscope refuses what the real one refuses: otherwise the end-to-end tests prove little."""

from __future__ import annotations

import gzip

import aiohttp
import pytest

from tests.integrations.profilers.pyroscope_fake import Invalid, decode_push, parse_folded, parse_key


@pytest.mark.parametrize("name", [
    "my.worker{}",  # the last dot-part is not a profile type
    "cpu{}",  # no application before the type
    "svc.cpu",  # no labels part
    "svc.cpu{env=prod",  # unclosed
    "my worker.cpu{}",  # a space in the application name
    "svc.cpu{1env=prod}", "svc.cpu{env-x=prod}", "svc.cpu{__name__=x}", "svc.cpu{env}",  # bad label names
    "svc.cpu{a=1,a=2}",
    "svc.cpu{" + ",".join(f"k{i}=v" for i in range(29)) + "}",  # over the series label limit
])
def test_parse_key_refuses(name):
    with pytest.raises(Invalid):
        parse_key(name)


@pytest.mark.parametrize("body", [b"", b"a;b\n", b"a;b x\n", b"a;b 0\n", b"a;b -1\n", b" 3\n"])
def test_parse_folded_refuses(body):
    with pytest.raises(Invalid):
        parse_folded(body)


def test_decode_push_refuses_garbage_and_series_without_names():
    with pytest.raises(Invalid):
        decode_push(b"\x0a\xff")  # truncated
    series_without_labels = b"\x0a\x00"
    with pytest.raises(Invalid):
        decode_push(series_without_labels)


async def test_the_endpoint_answers_400_and_records_why(pyroscope):
    params = {"name": "svc.cpu{}", "from": "20", "until": "10", "format": "folded", "sampleRate": "100",
              "spyName": "pyspy"}
    async with aiohttp.ClientSession() as session:
        async with session.post(pyroscope.url + "/ingest", params=params, data=b"a;b 1\n") as resp:
            assert resp.status == 400
        async with session.post(pyroscope.url + "/push.v1.PusherService/Push", data=gzip.compress(b"\x0a\x00"),
                                headers={"Content-Encoding": "gzip"}) as resp:
            assert resp.status == 400
    assert len(pyroscope.errors) == 2 and "from 20 > until 10" in pyroscope.errors[0]
    pyroscope.errors.clear()  # seen: the fixture's final check is for the other tests
