"""A sidecar at debug level reading SQS queues from moto: botocore logs every request it signs (the
session token as a header, the signature, the endpoint URL with its user info); none of it is shown."""

from __future__ import annotations

import re

import boto3

from tests.integrations.queues.test_queue_sidecar import failing_queues
from tests.support import wait_until

ACCESS_SECRET = "SecretAccessKeyZq81x"
SESSION_TOKEN = "SessTokFAKE0123456789Zq"
ENDPOINT_PASSWORD = "EndpointPw77Zq"


def test_a_debug_log_of_sqs_polls_shows_no_credential(sidecar_factory, moto_port, unique) -> None:
    boto3.client("sqs", endpoint_url=f"http://127.0.0.1:{moto_port}", region_name="us-east-1",
                 aws_access_key_id="x", aws_secret_access_key="y").create_queue(QueueName=unique)
    endpoint = f"127.0.0.1:{moto_port}"
    # the first is read (the credentials are in use); the second's endpoint has user info, which
    # aiohttp refuses to send: botocore logs the request, URL and headers, before it fails
    queues = (f"sqs://{unique}?region=us-east-1&endpoint=http://{endpoint}&interval=1,"
              f"sqs://{unique}?region=us-east-1&endpoint=http://eu:{ENDPOINT_PASSWORD}@{endpoint}&interval=1&name=ep")
    sidecar = sidecar_factory(
        AWS_ACCESS_KEY_ID="AKIAEXAMPLEID", AWS_SECRET_ACCESS_KEY=ACCESS_SECRET, AWS_SESSION_TOKEN=SESSION_TOKEN,
        AWS_REGION="us-east-1", TASKLENS_LOG_LEVEL="debug", TASKLENS_PROFILE_MODE="off", TASKLENS_QUEUES=queues)
    sidecar.wait_ready()

    def polled() -> bool:
        text = sidecar.get("/metrics")[1]
        return f'queue_depth{{queue="{unique}"' in text and 'tasklens_queue_poll_errors_total{queue="ep"' in text \
            and failing_queues(sidecar) == {"ep"}
    wait_until(polled, 30, what="a reading of the first queue and an error of the second")
    assert sidecar.stop() == 0
    log = sidecar.log
    assert [s for s in (ACCESS_SECRET, SESSION_TOKEN, ENDPOINT_PASSWORD) if s in log] == []
    # what was masked was logged: the headers, the canonical request, the endpoint URL
    assert re.search(r"'X-Amz-Security-Token': b'\*\*\*'", log) and re.search(r"'Authorization': b'\*\*\*'", log)
    assert "x-amz-security-token:***" in log and "'url': 'http://***@127.0.0.1" in log  # user:password is a secret as a whole
    assert "aiobotocore.credentials: Found credentials in environment variables" in log  # not read as a header
