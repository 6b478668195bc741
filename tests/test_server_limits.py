"""Limits and security of the real server: API keys, Origins, max sessions, request rate, static
files (no path traversal), backpressure on a client that does not read, prewarm, idle timeout."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

pytest.importorskip("aiohttp")

from aiohttp.test_utils import make_mocked_request  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

from streamtts.protocol import Limits  # noqa: E402
from streamtts.server import ServerConfig  # noqa: E402
from streamtts.server.limits import Guard  # noqa: E402
from support.servers import ThreadServer  # noqa: E402
from support.ws import collect, events, jsend, ws_connect  # noqa: E402

KEY = "sekret-key"
GOOD_ORIGIN = "https://good.example"
PREWARM = ["操作成功。", "请稍等。"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    web = root / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>streamtts</title>", encoding="utf-8")
    (web / "app.js").write_text("console.log('hi')", encoding="utf-8")
    (web / ".hidden").write_text("no", encoding="utf-8")
    (root / "secret.txt").write_text("TOP SECRET", encoding="utf-8")
    (root / "prewarm.txt").write_text("# greetings\n" + "\n".join(PREWARM) + "\n\n", encoding="utf-8")
    (web / "link").symlink_to(root / "secret.txt")
    return root


@pytest.fixture(scope="module")
def server(torch_engine, site):
    config = ServerConfig(port=0, api_keys=(KEY,), allowed_origins=(GOOD_ORIGIN,), max_sessions=2,
                          static_dir=site / "web", prewarm=site / "prewarm.txt", max_buffered_s=1.0,
                          idle_timeout_s=2.0, limits=Limits(rate=100, burst=200))
    with ThreadServer(config, torch_engine) as srv:
        yield srv


def raw_get(server, path: str, headers=None) -> tuple[int, bytes]:
    """GET with the path sent exactly as given (no client-side normalization)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_ws_needs_a_key(server):
    with pytest.raises(InvalidStatus) as info:
        ws_connect(server)
    assert info.value.response.status_code == 401
    body = json.loads(info.value.response.body)
    assert body["type"] == "error" and body["code"] == "unauthorized" and body["fatal"] is True
    with pytest.raises(InvalidStatus):
        ws_connect(server, "?api_key=wrong")
    with ws_connect(server, f"?api_key={KEY}") as ws:  # browsers: the query parameter
        jsend(ws, type="end")
        assert collect(ws)[1] == 1000
    with ws_connect(server, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        jsend(ws, type="end")
        assert collect(ws)[1] == 1000


def test_http_needs_a_key(server):
    openai = pytest.importorskip("openai")
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.audio.speech.create(model="tts-1", voice="alloy", input="你好。", response_format="pcm")
    assert info.value.body["code"] == "unauthorized"
    assert server.get("/v1/voices")[0] == 401
    assert server.get("/v1/voices", headers={"Authorization": f"Bearer {KEY}"})[0] == 200
    assert server.get("/health")[0] == 200 and server.get("/ready")[0] == 200 and server.get("/metrics")[0] == 200


def test_origins(server):
    with pytest.raises(InvalidStatus) as info:
        ws_connect(server, f"?api_key={KEY}", origin="https://evil.example")
    assert info.value.response.status_code == 403
    assert json.loads(info.value.response.body)["code"] == "origin_not_allowed"
    for origin in (GOOD_ORIGIN, f"http://127.0.0.1:{server.port}"):  # listed, or the server's own page
        with ws_connect(server, f"?api_key={KEY}", origin=origin) as ws:
            jsend(ws, type="end")
            assert collect(ws)[1] == 1000


def test_max_sessions_refuses_cleanly(server):
    with ws_connect(server, f"?api_key={KEY}") as a, ws_connect(server, f"?api_key={KEY}") as b:
        jsend(a, type="start")
        jsend(b, type="start")
        a.recv(timeout=30), b.recv(timeout=30)
        with ws_connect(server, f"?api_key={KEY}") as c:
            items, code = collect(c)
        assert code == 1013
        assert items == [{"type": "error", "code": "too_many_sessions", "fatal": True, "message": items[0]["message"]}]
        jsend(a, type="text", text="还能用。")  # the open sessions are unaffected
        jsend(a, type="end")
        items, code = collect(a)
        assert code == 1000 and events(items, "done")[0]["segments"] == 1
    with ws_connect(server, f"?api_key={KEY}") as d:  # a slot is free again
        jsend(d, type="end")
        assert collect(d)[1] == 1000


def test_static_files_and_no_path_traversal(server):
    status, body = raw_get(server, "/")
    assert status == 200 and b"<title>streamtts</title>" in body
    assert raw_get(server, "/app.js") == (200, b"console.log('hi')")
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt",
                 "/app.js/../../secret.txt", "//secret.txt", "/link", "/.hidden", "/nothing.html",
                 "/..%5csecret.txt", "/%00", "/" + "../" * 8 + "etc/passwd"):
        status, body = raw_get(server, path)
        assert status in (400, 404), path
        assert b"SECRET" not in body and b"root:" not in body, path


def test_request_rate_per_key():
    guard = Guard(ServerConfig(api_keys=("a", "b"), request_rate=1.0, request_burst=3))
    ra = make_mocked_request("GET", "/v1/stream", headers={"Authorization": "Bearer a"})
    rb = make_mocked_request("GET", "/v1/stream?api_key=b")
    assert [guard.admit_request(ra) for _ in range(5)] == [True, True, True, False, False]
    assert guard.admit_request(rb), "keys have their own buckets"


def test_prewarmed_phrases_are_cache_hits(server):
    before = server.metrics()
    with ws_connect(server, f"?api_key={KEY}") as ws:
        jsend(ws, type="text", text=PREWARM[0])
        jsend(ws, type="end")
        items, code = collect(ws)
    after = server.metrics()
    assert code == 1000 and events(items, "segment")[0]["text"] == PREWARM[0]
    assert after["streamtts_cache_hits_total"] - before["streamtts_cache_hits_total"] == 1
    assert after["streamtts_cache_misses_total"] == before["streamtts_cache_misses_total"]
    assert events(items, "done")[0]["ttfa_ms"] < 200


def test_a_client_that_does_not_read_is_paused(server):
    text = "这个客户端不读数据。服务器应该暂停它的合成。缓冲区不能无限增长。直到客户端开始读取为止。然后继续说完。"
    sched = server.state.engine.scheduler
    # Small kernel buffers on both ends, so the socket fills after a second of audio, not megabytes
    # (loopback TCP would otherwise absorb this whole text before the server notices).
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", server.port))
    with ws_connect(server, f"?api_key={KEY}", max_queue=1, sock=sock) as ws:
        deadline = time.monotonic() + 10
        while not list(server.state.sockets):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        [server_ws] = list(server.state.sockets)
        server_ws._req.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        jsend(ws, type="start", format="pcm_f32le", sample_rate=48000)  # 192 kB per second of audio
        jsend(ws, type="text", text=text)
        jsend(ws, type="end")
        # Wait on the server's own state, not on time: its scheduler has paused the request (its
        # backlog reached max_buffered_s) while its socket holds data the kernel would not take,
        # i.e. because the client does not read. A starved machine only makes this take longer.
        transport = server_ws._req.transport
        job, deadline = None, time.monotonic() + 120
        while not (job is not None and job.status.value == "paused" and transport.get_write_buffer_size() > 0):
            assert time.monotonic() < deadline, "synthesis never paused"
            job = job or next(iter(sched.requests.values()), None)
            time.sleep(0.02)
        produced = job.produced_s
        assert produced < 8, "paused for the client, with most of the ~11 s text unsaid"
        assert job.backlog_s < 2 * server.config.max_buffered_s
        deadline = time.monotonic() + 120
        while job.produced_s == produced:  # reading resumes it
            assert time.monotonic() < deadline, "synthesis did not resume"
            ws.recv(timeout=60)
        jsend(ws, type="cancel")
        items, code = collect(ws)
    assert code == 1000 and events(items, "cancelled") and events(items, "done")


def test_idle_session_is_closed(server):
    with ws_connect(server, f"?api_key={KEY}") as ws:
        jsend(ws, type="start")
        t0 = time.monotonic()
        items, code = collect(ws, timeout=10)
    assert code == 1001 and events(items, "error")[-1]["code"] == "idle_timeout"
    idle = server.config.idle_timeout_s
    assert 0.75 * idle < time.monotonic() - t0 < 3 * idle
