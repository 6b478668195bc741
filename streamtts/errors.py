"""Typed errors, and the table of every error code the server sends.

Every error a user can cause carries a stable ``code`` (the CLI's exit message, the server's
``{"type": "error", "code": ...}`` events) and a message that says what went wrong and what to do
about it. ``ERRORS`` maps each code the server sends to its HTTP status, its WebSocket behaviour
(fatal or not, close code) and what Wyoming does with it; the transports build their errors from it::

    error_message("server_busy", "...")   # {"type": "error", "code": ..., "message": ..., "fatal": True}
    close_code("server_busy")             # 1013
    http_status("unauthorized")           # 401

No imports beyond the standard library: the clients and the sans-I/O protocol use this module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


class StreamTTSError(Exception):
    """Base of all errors that are the user's input or environment, not a bug."""

    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TextError(StreamTTSError, ValueError):
    """The text cannot be spoken."""

    code = "bad_text"


class EmptyTextError(TextError):
    code = "empty_text"


class NoSpeakableTextError(TextError):
    code = "no_speakable_text"


class UnknownVoiceError(StreamTTSError, ValueError):
    code = "unknown_voice"


class BadVoiceError(StreamTTSError, ValueError):
    """A voice blend that is malformed (syntax, weights, too many or repeated voices)."""

    code = "bad_voice"


class MissingExtraError(StreamTTSError):
    """A command needs an optional dependency group that is not installed."""

    code = "missing_extra"


class ModelPackError(StreamTTSError):
    """The voices could not be fetched, verified or converted."""

    code = "model_pack"


class UnsafePickleError(ModelPackError):
    """A pickle asked for a global that is not on the allow-list."""

    code = "unsafe_pickle"


class SsmlError(StreamTTSError, ValueError):
    """SSML input that is not well-formed, uses an unsupported construct, or has a bad value.

    ``line`` and ``column`` (1-based, None when unknown) locate the problem in the document."""

    code = "invalid_ssml"

    def __init__(self, message: str, line: "int | None" = None, column: "int | None" = None):
        if line is not None:
            message = f"line {line}, column {column}: {message}"
        super().__init__(message)
        self.line, self.column = line, column


class LexiconError(StreamTTSError, ValueError):
    """A user lexicon file (``--lexicon``) that cannot be read or has a bad line."""

    code = "bad_lexicon"


# ---- the error table ---------------------------------------------------------------------------
#
# Every code the server sends, and what each transport does with it. The transports build their
# errors from here: ``error_message`` (WebSocket JSON), ``close_code``, ``http_status`` and, in
# streamtts/server/errors.py, ``http_error`` (HTTP bodies) and ``wyoming_error`` (Wyoming events).
# docs/protocol.md prints ``error_table_markdown()`` between its error-table markers
# (``python -m streamtts.errors docs/protocol.md`` rewrites it; tests/test_error_table.py checks).

KEPT, CLOSES, KEPT_OR_CLOSES = "kept", "closes", "kept or closes"  # Wyoming: the connection after it
DEFAULT_CLOSE = 1008  # policy violation: a fatal code without a close code of its own
UNKNOWN_HTTP = 500  # a code the table does not know over HTTP: the server's fault


@dataclass(frozen=True)
class ErrorSpec:
    """One error code.

    ``http``: the status of an HTTP answer with it (a speech request's, or a WebSocket upgrade's
    refusal), None when it is never an HTTP answer. ``fatal``: on the WebSocket, True when the
    session is closed with ``close``, False when it goes on, None when a session never gets it
    (then it may still refuse the upgrade with ``http``). ``close``: the WebSocket close code that
    goes with it (for a non-fatal code: the one the socket layer closes with). ``wyoming``: KEPT,
    CLOSES or KEPT_OR_CLOSES (the note says when), None when Wyoming never sends it."""

    code: str
    http: "int | None"
    fatal: "bool | None"
    close: "int | None"
    wyoming: "str | None"
    meaning: str


_TABLE = (
    # code, HTTP, WebSocket fatal, close code, Wyoming, meaning
    # -- a client's message or request
    ("bad_json", 400, False, None, None, "a message (or HTTP body) that is not valid JSON"),
    ("bad_message", 400, False, None, KEPT_OR_CLOSES,
     "not an object, a missing or wrong field, or a message not valid now (a second `start`); HTTP 426: "
     "a request to `/v1/stream` that is no WebSocket upgrade; Wyoming closes after a frame that is no "
     "Wyoming event (not JSON, no `type`: the framing is lost)"),
    ("unknown_type", None, False, None, None, "a message `type` that is not one of the client messages"),
    ("binary_not_allowed", None, False, None, None, "a binary frame from the client"),
    ("empty_text", 400, False, None, KEPT, "an empty `text` (`input`)"),
    ("text_too_long", 400, False, None, KEPT, "more characters than allowed per message or per session (stream)"),
    ("message_too_large", 413, False, 1009, CLOSES,
     "a message over `max_message_bytes` (the session goes on), a WebSocket frame over `max_frame_bytes` "
     "(closed with 1009 by the socket layer), an HTTP body over 1 MiB, or a Wyoming event over its limits"),
    ("unknown_voice", 400, False, None, KEPT, "a voice name that is not one of the 24"),
    ("bad_voice", 400, False, None, KEPT, "a malformed voice or voice blend"),
    ("unknown_format", 400, False, None, None, "an audio `format` (`response_format`) that is not offered"),
    ("unknown_stream_format", 400, None, None, None, "a `stream_format` other than `audio` and `sse`"),
    ("unsupported_sample_rate", None, False, None, None, "a `sample_rate` that is not offered"),
    ("bad_speed", 400, False, None, None, "a `speed` outside 0.5-2.0 or not a number"),
    ("bad_instructions", 400, None, None, None, "`instructions` that are not a string of at most 4096 characters"),
    ("text_after_end", None, False, None, None, "`text` after `end`"),
    ("bad_context", None, False, None, None,
     "a `context_id` that is not 1-64 characters of `A-Z a-z 0-9 _ - . :`, one on a socket without "
     "contexts, or `close_context` of no live context"),
    ("too_many_contexts", None, False, None, None, "a new `context_id` while `--max-contexts` contexts are live"),
    ("no_speakable_text", 400, False, None, KEPT, "nothing to speak: only emoji, symbols or control characters"),
    ("invalid_ssml", 400, False, None, KEPT,
     "an SSML document that is not well-formed or uses a bad value (the message starts `line L, column C:`)"),
    ("bad_utf8", 400, False, 1007, KEPT,
     "invalid UTF-8 in a text frame, or a lone surrogate escape such as `\"\\ud800\"` (aiohttp older than "
     "3.14 closes such a socket itself, with 1007)"),
    ("unsupported_language", None, None, None, KEPT, "a Wyoming `voice.language` that is not Chinese"),
    ("unsupported_text_format", None, None, None, KEPT, "a Wyoming `text_format` other than `text` and `ssml`"),
    ("no_stream", None, None, None, KEPT, "`synthesize-chunk` or `synthesize-stop` without `synthesize-start`"),
    ("stream_open", None, None, None, KEPT, "`synthesize-start` inside a stream"),
    # -- who may connect, and how much
    ("unauthorized", 401, None, None, None, "a missing or wrong API key (the WebSocket upgrade is refused)"),
    ("origin_not_allowed", 403, None, None, None,
     "a browser page of another origin (the WebSocket upgrade, a `/v1/*` request or its preflight is refused)"),
    ("rate_limited", 429, False, None, None,
     "too many messages a second (they are dropped; one error per run), too many new sessions or requests "
     "for a key, or too many failed keys from an IP (HTTP 429 with `Retry-After`)"),
    ("too_many_sessions", 503, True, 1013, CLOSES, "more open sessions than `--max-sessions`"),
    ("server_busy", 503, False, 1013, KEPT,
     "every stream slot is taken and the queue is full or the wait for a slot ran out: that utterance "
     "is dropped, the session goes on (HTTP: `Retry-After`)"),
    ("too_many_errors", None, True, 1008, None, "100 messages in a row were answered with an error"),
    ("outbox_full", None, True, 1008, None, "more than 2 MiB is waiting for a client that does not read"),
    ("idle_timeout", None, True, 1001, CLOSES, "no valid message (Wyoming: no event) for `idle_timeout_s`"),
    # -- the server
    ("going_away", 503, True, 1001, KEPT, "the server is shutting down"),
    ("engine_unavailable", 503, True, 1011, KEPT,
     "the engine failed to load, crashed or hangs: restart the process (engine replicas: an utterance "
     "that finds no replica left gets it with `fatal: false` unless its socket has sent `end`)"),
    ("internal", None, True, 1011, KEPT_OR_CLOSES,
     "a bug: the session (Wyoming: the synthesis; a bug in the connection itself closes it) ends, others go on"),
    ("input_too_long", None, True, 1008, KEPT, "a chunk longer than the cuda backend's memory width"),
    ("slots_exhausted", None, True, 1008, KEPT, "every decoder slot of the cuda backend is in use"),
)

ERRORS: "dict[str, ErrorSpec]" = {row[0]: ErrorSpec(*row) for row in _TABLE}


def error_spec(code: str) -> "ErrorSpec | None":
    return ERRORS.get(code)


def is_fatal(code: str) -> bool:
    """On the WebSocket: does this code close the session? (False for codes the table does not
    know, and for those a session never gets.)"""
    spec = ERRORS.get(code)
    return bool(spec is not None and spec.fatal)


def close_code(code: str) -> int:
    """The WebSocket close code a session that ends with ``code`` is closed with."""
    spec = ERRORS.get(code)
    return spec.close if spec is not None and spec.close is not None else DEFAULT_CLOSE


def http_status(code: str) -> int:
    """The HTTP status of an answer with ``code``; UNKNOWN_HTTP (500) for a code that is never an
    HTTP answer (a bug of the caller: tests/test_error_table.py checks the call sites)."""
    spec = ERRORS.get(code)
    return spec.http if spec is not None and spec.http is not None else UNKNOWN_HTTP


def error_message(code: str, message: str, fatal: "bool | None" = None) -> dict:
    """The WebSocket protocol's error message. ``fatal`` None: the table's (False for a code a
    session does not otherwise get); given: as given (a refused upgrade is fatal whatever the code,
    and so is a failure inside synthesis)."""
    if fatal is None:
        fatal = is_fatal(code)
    return {"type": "error", "code": code, "message": message, "fatal": bool(fatal)}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def error_table_markdown() -> str:
    """The table of docs/protocol.md: one row per code of ERRORS, in the table's order."""
    lines = ["| code | HTTP | WebSocket | Wyoming | meaning |", "|---|---|---|---|---|"]
    for spec in ERRORS.values():
        http = str(spec.http) if spec.http is not None else "—"
        if spec.fatal is None:
            ws = "—"
        elif spec.fatal:
            ws = f"fatal, close {spec.close if spec.close is not None else DEFAULT_CLOSE}"
        else:
            ws = "goes on"
        wyoming = spec.wyoming or "—"
        lines.append(f"| `{spec.code}` | {http} | {ws} | {wyoming} | {_cell(spec.meaning)} |")
    return "\n".join(lines) + "\n"


TABLE_START = "<!-- error-table:start (generated: python -m streamtts.errors docs/protocol.md) -->"
TABLE_END = "<!-- error-table:end -->"


def with_error_table(doc: str) -> str:
    """``doc`` with the text between TABLE_START and TABLE_END replaced by the current table."""
    head, start, rest = doc.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError("the document has no error-table markers")
    return f"{head}{start}\n{error_table_markdown()}{end}{tail}"


if __name__ == "__main__":  # python -m streamtts.errors docs/protocol.md: rewrite the table there
    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(with_error_table(path.read_text(encoding="utf-8")), encoding="utf-8")
