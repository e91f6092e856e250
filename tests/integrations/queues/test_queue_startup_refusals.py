"""URL parameters the client would refuse at every poll stop start-up instead (a gap for ever is no way to
learn of a typo): Redis' TLS parameters, which only a rediss:// connection takes (redis-py passed them to a
plain connection, which raised at every poll), and an `ssl_cert_reqs` redis-py does not know; an AMQP queue
name or vhost longer than an AMQP short string (255 bytes), which pamqp refused at every poll; an AMQP
`heartbeat=` aiormq reads as 0 (no heartbeat) unless it spells a number; a CA bundle, certificate or key
file that is not there; an SQS region or endpoint botocore refuses at every client it makes.

Each property holds the parse against the client's own check: what start-up accepts, the client takes."""

from __future__ import annotations

import pytest
import redis.asyncio
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pamqp import commands, frame

from urllib.parse import quote

from integrations.queues import parse
from integrations.queues.base import query_params

TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


def encoded(value: str) -> str:
    return quote(value, safe="")


def redis_client_url(param: str, value: str) -> str | None:
    """The URL redis-py is given for a rediss:// queue URL with `param=value`, or None: refused at start."""
    try:
        target = parse(f"rediss://127.0.0.1:6379/0?list=jobs&{param}={encoded(value)}")
    except ValueError:
        return None
    return target.url.client_url(keep=lambda k: k.startswith("ssl_"))


@pytest.mark.parametrize("param", ["ssl_cert_reqs=required", "ssl_ca_certs=/etc/ssl/ca.pem",
                                   "ssl_check_hostname=true"])
def test_tls_parameters_on_a_redis_url_without_tls_are_refused(param, tmp_path):
    (tmp_path / "ca.pem").write_text("")
    param = param.replace("/etc/ssl/ca.pem", str(tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match="rediss://"):
        parse(f"redis://127.0.0.1:6379/0?list=jobs&{param}")
    parse(f"rediss://127.0.0.1:6379/0?list=jobs&{param}")


@pytest.mark.parametrize("url", ["rediss://127.0.0.1:6379/0?list=jobs&ssl_ca_certs={}",
                                 "amqps://guest:guest@127.0.0.1:5671/?queue=jobs&cafile={}",
                                 "amqps://guest:guest@127.0.0.1:5671/?queue=jobs&certfile={}",
                                 "amqps://guest:guest@127.0.0.1:5671/?queue=jobs&keyfile={}"])
def test_a_tls_file_that_is_not_there_is_refused_naming_its_parameter(url, tmp_path):
    param = url.rpartition("&")[2].partition("=")[0]
    for missing in (tmp_path / "missing.pem", tmp_path):  # nothing there; a directory
        with pytest.raises(ValueError, match=f"{param}=.*(no such file)"):
            parse(url.format(quote(str(missing))))
    (tmp_path / "ca.pem").write_text("")
    parse(url.format(quote(str(tmp_path / "ca.pem"))))


@given(value=st.one_of(TEXT, st.integers(-5, 70000).map(str), st.sampled_from(["60", "0", "00", "65534", "65535",
                                                                              " 30", "+30", "1e3", "٣"])))
@settings(max_examples=200, deadline=None)
def test_an_amqp_heartbeat_accepted_is_the_number_aiormq_reads(value):
    from aiormq.connection import parse_heartbeat

    try:
        parse(f"amqp://guest:guest@127.0.0.1:5672/?queue=jobs&heartbeat={encoded(value)}")
    except ValueError as exc:
        assert "heartbeat=" in str(exc)
        return
    assert parse_heartbeat(value) == int(value)
    assert value.isascii() and value == value.strip()


def test_every_heartbeat_aiormq_would_read_as_no_heartbeat_is_refused():
    from aiormq.connection import parse_heartbeat

    for value in ("abc", "", "65535", "-1", "1.5", "30s"):
        assert parse_heartbeat(value) == 0
        with pytest.raises(ValueError, match="heartbeat="):
            parse(f"amqp://guest:guest@127.0.0.1:5672/?queue=jobs&heartbeat={encoded(value)}")


def botocore_refuses(region: str, endpoint: str | None) -> bool:
    import botocore.session

    try:
        botocore.session.get_session().create_client(
            "sqs", region_name=region, endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="y")
    except ValueError:  # InvalidRegionError is one; "Invalid endpoint: ..."
        return True
    return False


ENDPOINTS = st.one_of(
    st.builds("{}://{}{}".format, st.sampled_from(["http", "https", "HTTP", "ftp", "", "file"]),
              st.sampled_from(["127.0.0.1", "[::1]", "localhost", "sqs.local", "", "a_b", "-x", "h" * 70]),
              st.sampled_from(["", ":4566", ":4566/", "/path", ":x", ":99999"])),
    TEXT)


@given(region=st.one_of(st.sampled_from(["us-east-1", "eu-west-1", "us-gov-west-1", "cn-north-1", "local"]), TEXT),
       endpoint=ENDPOINTS)
@example(region="bad_region!", endpoint="http://127.0.0.1:4566")
@example(region="us-east-1", endpoint="127.0.0.1:4566")
@example(region="us-east-1", endpoint="ftp://127.0.0.1:4566")
@settings(max_examples=150, deadline=None)
def test_an_sqs_region_and_endpoint_accepted_are_ones_botocore_takes(region, endpoint):
    url = f"sqs://orders?region={encoded(region)}&endpoint={encoded(endpoint)}"
    try:
        target = parse(url)
    except ValueError as exc:  # naming what: the region, the endpoint, or a URL that does not read as written
        assert any(what in str(exc) for what in ("region", "endpoint=", "as written")), exc
        return
    assert not botocore_refuses(target.url.params.get("region") or "us-east-1", endpoint or None)
    assert endpoint == "" or endpoint.lower().startswith(("http://", "https://"))


@given(value=st.one_of(TEXT, st.sampled_from(["none", "optional", "required", "Required", "bogus", ""])))
@settings(max_examples=200, deadline=None)
def test_ssl_cert_reqs_accepted_is_taken_by_redis_py(value):
    client_url = redis_client_url("ssl_cert_reqs", value)
    if client_url is None:
        assert value not in ("none", "optional", "required")  # ("" too: redis-py would read it as required)
        return
    redis.asyncio.from_url(client_url).connection_pool.make_connection()  # raises for a value it refuses


@given(value=st.one_of(TEXT, st.sampled_from(["true", "False", "YES", "no", "1", "0", "off", "on", ""])))
@example(value="off")  # redis-py reads `off` as true: refused, not checked the other way round
@settings(max_examples=200, deadline=None)
def test_ssl_check_hostname_is_a_boolean_redis_py_reads_as_written(value):
    client_url = redis_client_url("ssl_check_hostname", value)
    if client_url is None:
        assert value.lower() not in ("true", "false", "yes", "no", "1", "0")
        return
    taken = redis.asyncio.from_url(client_url).connection_pool.connection_kwargs["ssl_check_hostname"]
    assert taken is (value.lower() in ("true", "yes", "1"))


NAMES = st.one_of(st.text(st.sampled_from("qé.-_"), min_size=1, max_size=300),
                  st.integers(1, 400).map(lambda n: "q" * n))


@given(name=NAMES, management=st.booleans())
@example(name="q" * 255, management=False)
@example(name="q" * 256, management=False)
@example(name="é" * 128, management=True)
@settings(max_examples=200, deadline=None)
def test_an_amqp_queue_name_accepted_is_one_pamqp_sends(name, management):
    url = f"amqp://guest:guest@127.0.0.1:5672/?queue={encoded(name)}"
    if management:
        url += "&management=http://127.0.0.1:15672"
    try:
        target = parse(url)
    except ValueError as exc:
        assert len(name.encode()) > 255 or not management, exc
        return
    assert dict(query_params(target.url.parts.query))["queue"] == name
    assert len(name.encode()) <= 255  # RabbitMQ's bound for any queue name, read through either form
    if not management:
        frame.marshal(commands.Queue.Declare(queue=name, passive=True), 1)


@given(vhost=st.text(st.sampled_from("vé\U0001f600"), min_size=1, max_size=300))
@example(vhost="v" * 127)
@example(vhost="v" * 128)
@settings(max_examples=100, deadline=None)
def test_an_amqp_vhost_accepted_is_one_pamqp_sends(vhost):
    url = f"amqp://guest:guest@127.0.0.1:5672/{encoded(vhost)}?queue=jobs"
    try:
        parse(url)
    except ValueError:
        with pytest.raises((ValueError, TypeError)):  # pamqp's refusals: too many characters, too many bytes
            frame.marshal(commands.Connection.Open(virtual_host=vhost), 0)
        return
    frame.marshal(commands.Connection.Open(virtual_host=vhost), 0)
