"""The real sidecar against an ECS metadata endpoint that answers HTTP 500 with a body quoting
credentials (as a proxy or an intake may echo them): the AWS secret key and session token of the
sidecar's environment, and secrets no setting names, in the free-text forms the log masks
(`password=`, `x-api-key=`, a JSON `"token": "..."`, `Authorization: Bearer`). None of them is in
`/status` (the ECS source's `last_error`), `/status/history` (the page's component and its recent
errors) or the log, and the masked error is there to read in all three."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from tests.reliability.support import poll
from tests.support import Sidecar, serve_app

AWS_SECRET = "secretvalue-AKIAEXAMPLESECRET"
AWS_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLEsessionTOKEN"
PASSWORD = "hunter2hunter2"
JWT = "eyJhbGciOiJIUzI1NiJ9.xyzSIGNATURE"
JSON_TOKEN = "tok-Zq81-json-quoted"
API_KEY = "apikey-Zq81-header"
SECRETS = (AWS_SECRET, AWS_TOKEN, PASSWORD, JWT, JSON_TOKEN, API_KEY)
# the Authorization header last: its mask runs to the end of the line
BODY = (f'upstream said: {AWS_SECRET} session {AWS_TOKEN} password={PASSWORD} {{"token": "{JSON_TOKEN}"}} '
        f"x-api-key={API_KEY}\nAuthorization: Bearer {JWT}")


@pytest.mark.slow
async def test_an_ecs_error_body_quoting_credentials_is_masked_in_status_history_and_log(tmp_path) -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500, text=BODY)

    app = web.Application()
    app.router.add_get("/{tail:.*}", failing)
    runner, endpoint = await serve_app(app)
    try:
        sidecar = Sidecar(tmp_path, ECS_CONTAINER_METADATA_URI_V4=f"{endpoint}/v4/x", TASKLENS_POLL_INTERVAL="1",
                          TASKLENS_TOP_PROCESSES="0", AWS_SECRET_ACCESS_KEY=AWS_SECRET, AWS_SESSION_TOKEN=AWS_TOKEN)
        try:
            def failed() -> dict | None:
                code, text = sidecar.get("/status/history")
                data = json.loads(text) if code == 200 else {}
                return data if data.get("errors") and data["components"]["ecs"]["error"] else None

            history = await poll(failed, 30, "the ECS error in /status/history")
            shown = {"/status": sidecar.get("/status")[1], "/status/history": sidecar.get("/status/history")[1]}
        finally:
            assert sidecar.stop() == 0
        shown["log"] = sidecar.log
    finally:
        await runner.cleanup()
    assert {where: [s for s in SECRETS if s in text] for where, text in shown.items()
            if any(s in text for s in SECRETS)} == {}
    # the error is there, masked: what the log shows, /status and the page show
    masked = 'upstream said: *** session *** password=*** {"token": "***"} x-api-key=*** Authorization: ***'
    status = json.loads(shown["/status"])["components"]["ecs"]
    assert status["last_error"] == f"/task: HTTP 500: {masked}"
    assert history["components"]["ecs"]["error"] == f"/task: HTTP 500: {masked}"
    assert masked in history["errors"][-1]["message"]
    assert f"ECS metadata poll failed (http_5xx): /task: HTTP 500: {masked}" in shown["log"]
