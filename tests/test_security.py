"""Security details of the real server: failed keys are throttled per client IP, a key in the query
string never reaches the logs, other sites' pages are refused by default, ``"voice": null`` is a
type error.

Clients connect from different loopback addresses (127.0.0.2, 127.0.0.3 ...) to be different
client IPs of the same server, so one test's failed keys do not throttle another's."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time

import pytest

pytest.importorskip("aiohttp")

from aiohttp.test_utils import make_mocked_request  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

from streamtts.server import ServerConfig  # noqa: E402
from streamtts.server.limits import Guard, redact  # noqa: E402
from support.servers import ThreadServer  # noqa: E402
from support.ws import collect, events, jsend, ws_connect  # noqa: E402

KEY = "k3y-Sekret-1234567890"
WRONG = "wr0ng-Guess-0987654321"


@pytest.fixture(scope="module")
def keyed(torch_engine):
    config = ServerConfig(port=0, api_keys=(KEY,), static_dir=None, capacity=2,
                          auth_failure_burst=3, auth_failure_rate=1.0)
    with ThreadServer(config, torch_engine) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyless(torch_engine):
    with ThreadServer(ServerConfig(port=0, static_dir=None, capacity=2), torch_engine) as srv:
        yield srv


def request(server, method: str, path: str, headers=None, body: bytes | None = None,
            source: str = "127.0.0.1") -> tuple[int, dict, bytes]:
    """One HTTP request from the loopback address ``source``, the path sent as given."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def ws_from(server, source: str, query: str = "", **kw):
    """A WebSocket client whose socket comes from the loopback address ``source``."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30, source_address=(source, 0))
    return ws_connect(server, query, sock=sock, **kw)


def ws_refusal(server, source: str, query: str = "", **kw) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as info:
        ws_from(server, source, query, **kw)
    return info.value.response.status_code, json.loads(info.value.response.body)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def speech_body() -> bytes:
    return json.dumps({"model": "tts-1", "voice": "alloy", "input": "你好。", "response_format": "pcm"}).encode()


# ---- failed authentication ------------------------------------------------------------------


def test_failed_keys_are_throttled_per_client_ip(keyed):
    ip = "127.0.0.2"
    # the burst (3) of failures: over HTTP and WebSocket alike, each an ordinary 401
    assert request(keyed, "GET", "/v1/voices", bearer(WRONG), source=ip)[0] == 401
    assert ws_refusal(keyed, ip, f"?api_key={WRONG}")[0] == 401
    assert request(keyed, "GET", "/v1/voices", source=ip)[0] == 401  # no key at all counts too
    # now this address is refused before its key is looked at: a wrong key ...
    status, headers, body = request(keyed, "GET", "/v1/voices", bearer(WRONG), source=ip)
    assert status == 429 and json.loads(body)["error"]["code"] == "rate_limited"
    assert int(headers["Retry-After"]) >= 1
    # ... and the right one (else the answer would tell a guesser when a guess is right)
    assert request(keyed, "GET", "/v1/voices", bearer(KEY), source=ip)[0] == 429
    status, _, body = request(keyed, "POST", "/v1/audio/speech", {**bearer(KEY), "Content-Type": "application/json"},
                              speech_body(), source=ip)
    assert status == 429 and json.loads(body)["error"]["code"] == "rate_limited"
    status, body = ws_refusal(keyed, ip, f"?api_key={KEY}")
    assert status == 429 and body["type"] == "error" and body["code"] == "rate_limited" and body["fatal"] is True
    # other addresses are not affected
    assert request(keyed, "GET", "/v1/voices", bearer(KEY), source="127.0.0.4")[0] == 200
    with ws_from(keyed, "127.0.0.4", f"?api_key={KEY}") as ws:
        jsend(ws, type="end")
        assert collect(ws)[1] == 1000
    # the bucket refills (1 a second here): after Retry-After the right key works again
    time.sleep(int(headers["Retry-After"]) + 0.2)
    assert request(keyed, "GET", "/v1/voices", bearer(KEY), source=ip)[0] == 200
    assert request(keyed, "GET", "/v1/voices", bearer(WRONG), source=ip)[0] == 401
    assert request(keyed, "GET", "/v1/voices", bearer(KEY), source=ip)[0] == 429  # that was the last try
    assert keyed.metrics().get('streamtts_errors_total{code="rate_limited"}', 0) >= 4


# ---- keys in logs -----------------------------------------------------------------------------


def test_query_key_never_reaches_the_logs(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    ip = "127.0.0.3"
    with ws_from(keyed, ip, f"?api_key={KEY}") as ws:
        jsend(ws, type="text", text="好。")
        jsend(ws, type="end")
        assert collect(ws)[1] == 1000
    assert ws_refusal(keyed, ip, f"?api_key={WRONG}")[0] == 401
    assert request(keyed, "GET", f"/v1/voices?api_key={KEY}", source=ip)[0] == 200
    assert request(keyed, "GET", f"/v1/voices?api%5Fkey={KEY}", source=ip)[0] == 200  # yarl decodes the name
    # a request line past aiohttp's limit: aiohttp logs the error with the start of the line
    assert request(keyed, "GET", f"/v1/voices?api_key={KEY}&pad=" + "x" * 9000, source=ip)[0] in (400, 414)
    assert request(keyed, "GET", f"/v1/stream?api_key={WRONG}&pad=" + "x" * 9000, source=ip)[0] in (400, 414)
    time.sleep(0.2)  # the server thread's last records
    # everything the server logged (the websockets *client* logs its own request line at debug)
    text = "\n".join(logging.Formatter("%(name)s %(message)s").format(r) for r in caplog.records
                     if not r.name.startswith("websockets."))
    assert KEY not in text and WRONG not in text
    assert KEY[:8] not in text and WRONG[:8] not in text
    # the request lines were logged, redacted (so the check above looked at them)
    assert "api_key=***" in text, text[-2000:]


def test_redact():
    assert redact("GET /v1/stream?api_key=abc&x=1 HTTP/1.1") == "GET /v1/stream?api_key=***&x=1 HTTP/1.1"
    assert redact("b'GET /v1/x?API%5Fkey=abc'") == "b'GET /v1/x?API%5Fkey=***'"
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    assert redact("monkey=1 api_keys") == "monkey=1 api_keys"


# ---- Origins ---------------------------------------------------------------------------------------


def test_keyless_server_refuses_other_sites(keyless):
    evil = "https://evil.example"
    status, body = ws_refusal(keyless, "127.0.0.1", origin=evil)
    assert status == 403 and body["code"] == "origin_not_allowed"
    assert ws_refusal(keyless, "127.0.0.1", origin="null")[0] == 403  # sandboxed frames, file:// pages
    # a page on the same host but another port is another site
    assert ws_refusal(keyless, "127.0.0.1", origin=f"http://127.0.0.1:{keyless.port + 1}")[0] == 403
    status, headers, body = request(keyless, "GET", "/v1/voices", {"Origin": evil})
    assert status == 403 and json.loads(body)["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = request(keyless, "OPTIONS", "/v1/audio/speech",
                                 {"Origin": evil, "Access-Control-Request-Method": "POST"})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    # a "simple" cross-site POST (no preflight) is refused before anything is synthesized
    status, _, body = request(keyless, "POST", "/v1/audio/speech", {"Origin": evil, "Content-Type": "text/plain"},
                              speech_body())
    assert status == 403 and json.loads(body)["error"]["code"] == "origin_not_allowed"


def test_keyless_server_serves_its_own_page_and_non_browsers(keyless):
    own = f"http://127.0.0.1:{keyless.port}"
    for kw in ({"origin": own}, {}):  # the page it serves, and clients that send no Origin
        with ws_from(keyless, "127.0.0.1", **kw) as ws:
            jsend(ws, type="text", text="好。")
            jsend(ws, type="end")
            items, code = collect(ws)
        assert code == 1000 and events(items, "done")
    status, headers, _ = request(keyless, "GET", "/v1/voices", {"Origin": own})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == own
    status, headers, _ = request(keyless, "OPTIONS", "/v1/audio/speech",
                                 {"Origin": own, "Access-Control-Request-Method": "POST"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == own
    assert request(keyless, "GET", "/v1/voices")[0] == 200


def test_allowed_origin_list_and_star():
    # pure policy (which Origin is let in): a request object is enough
    def req(origin):
        return make_mocked_request("GET", "/v1/voices", headers={"Origin": origin, "Host": "127.0.0.1:8000"})

    listed = Guard(ServerConfig(allowed_origins=("https://good.example/",)))
    assert listed.origin_allowed(req("https://GOOD.example")) and listed.cors_origin(req("https://good.example"))
    assert listed.origin_allowed(req("http://127.0.0.1:8000"))  # its own page stays allowed
    assert not listed.origin_allowed(req("https://evil.example")) and listed.cors_origin(req("https://evil.example")) is None
    star = Guard(ServerConfig(allowed_origins=("*",)))
    assert star.origin_allowed(req("https://evil.example")) and star.cors_origin(req("https://evil.example")) == "*"
    default = Guard(ServerConfig())
    assert not default.origin_allowed(req("https://evil.example")) and default.cors_origin(req("https://evil.example")) is None


# ---- protocol types ---------------------------------------------------------------------------------


def test_voice_null_is_a_type_error(keyless):
    with ws_from(keyless, "127.0.0.1") as ws:
        jsend(ws, type="start", voice=None)
        err = json.loads(ws.recv(timeout=30))
        assert err["type"] == "error" and err["code"] == "bad_message" and err["fatal"] is False
        jsend(ws, type="start", voice="Aiyue")  # the session goes on: a valid start is still taken
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready" and ready["voice"] == "Aiyue"
        jsend(ws, type="end")
        assert collect(ws)[1] == 1000
