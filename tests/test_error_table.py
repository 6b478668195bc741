"""The one error table (streamtts/errors.py): docs/protocol.md prints it, every code the code can
send is in it, and the statuses and close codes clients see are the ones they always saw."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from streamtts import errors
from streamtts.errors import (CLOSES, DEFAULT_CLOSE, ERRORS, KEPT, KEPT_OR_CLOSES, close_code, error_message,
                              http_status, is_fatal, with_error_table)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
CODE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+|[a-z]+")

# Builders and raisers of errors: callee name -> position of the code argument.
BUILDERS = {
    "ProtocolError": 0, "BadRequest": 0, "error_message": 0, "http_error": 0, "wyoming_error": 0, "close_code": 0,
    "http_status": 0, "is_fatal": 0, "fail": 0, "_error": 0, "_client_error": 0, "shutdown": 0,
    "count_error": 1, "_fail": 1, "fail_plan": 1, "FailedOut": 1, "Failed": 1,
}
# Typed errors (``code = "..."`` of a StreamTTSError subclass) that no transport sends: the CLI's,
# the tools', and the engine-loading ones (a server whose engine fails to load says
# engine_unavailable). A new typed code must go into the table or here.
NEVER_SENT = {
    "error",  # StreamTTSError itself
    "bad_text",  # TextError, a base class never raised itself
    "missing_extra", "model_pack", "unsafe_pickle", "bad_lexicon", "asr_model", "loadtest", "gpu_inputs",
    "unknown_engine", "unknown_vocoder", "vocoder_unavailable", "cuda_unavailable", "tensorrt_unavailable",
}


def _sources(*dirs: str):
    for d in dirs:
        for path in sorted((ROOT / d).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _str(node) -> list[str]:
    """The string constants ``node`` can be (a conditional expression gives both branches)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _str(node.body) + _str(node.orelse)
    return []


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def codes_in_source() -> dict[str, str]:
    """Every error code literal the package hands to a builder, a raiser or a metric's ``code``
    label, and the typed errors' codes: code -> where (first place seen)."""
    found: dict[str, str] = {}

    def add(value: str, path: Path, node) -> None:
        if CODE.fullmatch(value):
            found.setdefault(value, f"{path.relative_to(ROOT)}:{node.lineno}")

    for path, tree in _sources("streamtts", "engines"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                index = BUILDERS.get(_callee(node))
                if index is not None and len(node.args) > index:
                    for v in _str(node.args[index]):
                        add(v, path, node)
                for kw in node.keywords:
                    if kw.arg == "code":
                        for v in _str(kw.value):
                            add(v, path, node)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
                # code, message = "idle_timeout", "..."
                for target in node.targets:
                    if isinstance(target, ast.Tuple) and len(target.elts) == len(node.value.elts):
                        for t, v in zip(target.elts, node.value.elts):
                            if isinstance(t, ast.Name) and t.id == "code":
                                for s in _str(v):
                                    add(s, path, node)
            elif isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                            and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == "code"):
                        for s in _str(stmt.value):
                            add(s, path, stmt)
    return found


def test_the_doc_prints_the_table():
    doc = DOC.read_text(encoding="utf-8")
    assert doc.count(errors.TABLE_START) == 1 and doc.count(errors.TABLE_END) == 1
    assert with_error_table(doc) == doc, ("docs/protocol.md's error table differs from streamtts.errors.ERRORS; "
                                          "run: python -m streamtts.errors docs/protocol.md")


def test_every_code_the_code_sends_is_in_the_table():
    found = codes_in_source()
    # the scan sees the transports' codes (a sanity check that it finds what it should)
    assert {"bad_json", "server_busy", "no_stream", "idle_timeout", "internal", "engine_unavailable",
            "unknown_stream_format", "too_many_errors", "input_too_long"} <= set(found)
    missing = {code: where for code, where in found.items() if code not in ERRORS and code not in NEVER_SENT}
    assert not missing, f"error codes sent but not in streamtts.errors.ERRORS (or NEVER_SENT): {missing}"
    unused = set(ERRORS) - set(found)
    assert not unused, f"codes in the table that nothing sends: {sorted(unused)}"


def test_every_code_of_the_table_is_in_the_doc():
    doc = DOC.read_text(encoding="utf-8")
    block = doc.split(errors.TABLE_START)[1].split(errors.TABLE_END)[0]
    assert [m for m in re.findall(r"^\| `([a-z_0-9]+)` \|", block, re.M)] == list(ERRORS)


def test_table_is_consistent():
    for code, spec in ERRORS.items():
        assert spec.code == code and CODE.fullmatch(code)
        if spec.fatal:
            assert spec.close is not None, code
        assert spec.wyoming in (None, KEPT, CLOSES, KEPT_OR_CLOSES), code
        assert spec.http is None or 400 <= spec.http < 600, code
        assert spec.fatal is not None or spec.http is not None or spec.wyoming is not None, f"{code} is sent nowhere"


# What clients saw before the table (the WebSocket close codes were streamtts.protocol.CLOSE_CODES,
# 1008 for any other fatal code; the HTTP statuses were spelled out at each call site).
CLOSE_BEFORE = {"too_many_sessions": 1013, "server_busy": 1013, "engine_unavailable": 1011, "internal": 1011,
                "message_too_large": 1009, "bad_utf8": 1007, "idle_timeout": 1001, "going_away": 1001,
                "unauthorized": 1008, "rate_limited": 1008, "outbox_full": 1008, "too_many_errors": 1008}
HTTP_BEFORE = {"unauthorized": 401, "origin_not_allowed": 403, "rate_limited": 429, "message_too_large": 413,
               "bad_json": 400, "engine_unavailable": 503, "too_many_sessions": 503, "server_busy": 503,
               "going_away": 503}


@pytest.mark.parametrize("code", sorted(set(ERRORS) | set(CLOSE_BEFORE) | {"no_such_code"}))
def test_close_codes_are_unchanged(code):
    assert close_code(code) == CLOSE_BEFORE.get(code, DEFAULT_CLOSE)


def test_close_codes_of_the_protocol_module_are_the_table():
    from streamtts.protocol import CLOSE_CODES

    assert all(close_code(c) == v for c, v in CLOSE_CODES.items())


def test_http_statuses_are_unchanged():
    for code, status in HTTP_BEFORE.items():
        assert http_status(code) == status, code


def _bad_request_codes() -> set[str]:
    """Codes a speech request's body can be refused with (openai_request's BadRequest): its own,
    those of check_text / parse_text it passes on, and the typed errors of voices and SSML."""
    found = set()
    request = ast.parse((ROOT / "streamtts/server/openai_request.py").read_text(encoding="utf-8"))
    for node in ast.walk(request):
        if isinstance(node, ast.Call) and _callee(node) == "BadRequest" and node.args:
            found.update(_str(node.args[0]))
    messages = ast.parse((ROOT / "streamtts/protocol/messages.py").read_text(encoding="utf-8"))
    for fn in messages.body:
        if isinstance(fn, ast.FunctionDef) and fn.name in ("check_text", "parse_text"):
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and _callee(node) == "ProtocolError" and node.args:
                    found.update(_str(node.args[0]))
    return found | {"unknown_voice", "bad_voice", "invalid_ssml"}


def test_bad_requests_are_400s():
    codes = _bad_request_codes()
    assert {"bad_message", "unknown_stream_format", "bad_instructions", "empty_text", "bad_utf8"} <= codes
    assert {c: http_status(c) for c in codes} == {c: 400 for c in codes}


def test_error_message_takes_fatal_from_the_table():
    assert error_message("too_many_sessions", "m") == {"type": "error", "code": "too_many_sessions", "message": "m",
                                                       "fatal": True}
    assert error_message("server_busy", "m")["fatal"] is False  # that utterance is dropped, the session goes on
    assert error_message("bad_json", "m")["fatal"] is False
    assert error_message("rate_limited", "m", fatal=True)["fatal"] is True  # a refused upgrade
    assert error_message("no_such_code", "m")["fatal"] is False
    assert is_fatal("going_away") and not is_fatal("unauthorized")


def test_http_error_shapes():
    pytest.importorskip("aiohttp")
    from streamtts.server.errors import http_error
    from streamtts.server.metrics import Metrics

    metrics = Metrics()
    r = http_error("server_busy", "full", metrics=metrics, headers={"Retry-After": "3"})
    assert r.status == 503 and r.headers["Retry-After"] == "3"
    assert json.loads(r.body) == {"error": {"message": "full", "type": "server_error", "param": None,
                                            "code": "server_busy"}}
    r = http_error("bad_voice", "no", param="voice")
    assert r.status == 400 and json.loads(r.body)["error"]["type"] == "invalid_request_error"
    assert json.loads(r.body)["error"]["param"] == "voice"
    r = http_error("unauthorized", "key", shape="stream", metrics=metrics)
    assert r.status == 401 and json.loads(r.body) == error_message("unauthorized", "key", fatal=True)
    r = http_error("bad_message", "upgrade", shape="stream", status=426)
    assert r.status == 426 and json.loads(r.body)["fatal"] is True
    counted = {s.labels["code"]: s.value for m in metrics.registry.collect() if m.name == "streamtts_errors"
               for s in m.samples if s.name == "streamtts_errors_total"}
    assert counted == {"server_busy": 1.0, "unauthorized": 1.0}
    with pytest.raises(ValueError):
        http_error("bad_json", "x", shape="xml")  # type: ignore[arg-type]


def test_wyoming_sends_only_codes_marked_for_it():
    """The codes wyoming.py sends by name are those the table says Wyoming sends."""
    path = ROOT / "streamtts/server/wyoming.py"
    sent = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and _callee(node) in ("ProtocolError", "_error") and node.args:
            sent.update(_str(node.args[0]))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            for target in node.targets:
                if isinstance(target, ast.Tuple) and isinstance(target.elts[0], ast.Name) \
                        and target.elts[0].id == "code":
                    sent.update(_str(node.value.elts[0]))
    assert {"no_stream", "idle_timeout", "message_too_large", "too_many_sessions"} <= sent
    assert {c for c in sent if ERRORS[c].wyoming is None} == set()
