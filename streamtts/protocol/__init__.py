"""The sans-I/O WebSocket protocol (docs/protocol.md): :mod:`.messages` (what a client may send,
checked) and :mod:`.session` (one session's state machine). No sockets, threads or heavy imports."""

from streamtts.audio.codec import FORMATS, SAMPLE_RATES, AudioEncoder, mulaw_decode, mulaw_encode
from streamtts.engine_client.stream import Segment
from streamtts.protocol.messages import (
                                         CLOSE_CODES,
                                         CancelEvent,
                                         EndEvent,
                                         FlushEvent,
                                         Limits,
                                         Options,
                                         ProtocolError,
                                         StartEvent,
                                         State,
                                         TextEvent,
                                         TokenBucket,
                                         check_text,
                                         error_message,
                                         parse_options,
                                         parse_text,
)
from streamtts.protocol.session import Session

__all__ = [
    "State", "Options", "Limits", "Session", "Segment", "StartEvent", "TextEvent",
    "FlushEvent", "CancelEvent", "EndEvent", "ProtocolError", "parse_options", "check_text", "parse_text",
    "error_message", "CLOSE_CODES", "TokenBucket", "AudioEncoder", "FORMATS", "SAMPLE_RATES",
    "mulaw_encode", "mulaw_decode",
]

