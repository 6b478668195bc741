"""Server settings: one frozen dataclass, filled from the command line or by hand.

    config = ServerConfig(port=0, api_keys=("secret",), max_sessions=8)
    app = create_app(config)            # streamtts.server
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from streamtts.protocol import Limits

# The web page is package data of the `clients` package (pyproject.toml), so the same lookup finds
# clients/web/ in a source checkout and in an installed wheel.
DEFAULT_STATIC_DIR = Path(str(importlib.resources.files("clients") / "web"))


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "auto"  # torch | onnx | onnx-int8 | auto (ignored when create_app gets an engine)
    vocoder: str = "auto"  # melgan | hifigan | auto
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    # Browser pages allowed besides the server's own (WebSocket and CORS); "*": every page.
    # Requests without an Origin header (not from a browser) are always allowed.
    allowed_origins: tuple[str, ...] = ()
    # Open WebSocket sessions (idle ones included) + HTTP speech requests. An idle socket holds no
    # stream slot, only its connection and session state (streamtts/bench/idle_sessions.py
    # measures it), so a bot can keep one per call; the default stays under the common soft limit
    # of 1024 open files.
    max_sessions: int = 512
    # Streams admitted at once (0: measured at start from the engine's speed). Beyond it an
    # utterance of any transport waits in a queue of `queue_size` (a WebSocket one told its
    # position) for up to `queue_timeout_s`, else is refused with `server_busy` (HTTP: 503 with
    # Retry-After).
    capacity: int = 0
    queue_size: int = 16
    queue_timeout_s: float = 30.0
    max_batch: int = 64  # rows in one batched decoder call
    # frames of audio vocoded per engine tick: bounds a tick, so a newcomer's wait for its first
    # block and a stream about to run dry (see SchedulerConfig)
    vocode_frames: int = 32
    limits: Limits = field(default_factory=Limits)  # per-session message limits (protocol)
    max_frame_bytes: int = 4 * 1024 * 1024  # WebSocket frames beyond this close the socket (1009)
    request_rate: float = 10.0  # new sessions/requests per second per API key (or client IP) ...
    request_burst: float = 20.0  # ... and in a burst
    # Failed authentications (401) per client IP: past the burst, requests that need a key get
    # 429 until the bucket refills (one more try every 1/rate s), whatever key they bring.
    auth_failure_rate: float = 0.1
    auth_failure_burst: float = 10.0
    max_input_chars: int = 4096  # `input` of POST /v1/audio/speech (OpenAI's limit)
    max_buffered_s: float = 5.0  # audio a session may have waiting for its client before it pauses
    # Audio a stream may be ahead of its listener's real-time clock (see streamtts/audio/pacing.py);
    # a cancel reaches a playback-speed reader after at most this much audio. <= 0: no pacing.
    max_lead_s: float = 2.0
    # An utterance's first chunk waits this long for a punctuation mark or its cap, then is cut at
    # a word boundary (see SchedulerConfig.first_cut_s): the first audio of slow text (an LLM's
    # tokens) does not wait for the first comma. 0: wait for the mark or the cap.
    first_chunk_wait_s: float = 0.1
    # Slots beyond a live capacity, as a share of it, while the engine has headroom (capacity.py,
    # extra slots): conversation turns come in bursts and mostly play out. 0: none, for streams
    # that all speak at length at once (long-form reading), which the bet would underrun.
    extra_slots: float = 1.0
    drain_timeout_s: float = 10.0  # on SIGTERM/SIGINT: time active utterances get to finish
    tick_deadline_s: float = 30.0  # an engine tick running longer means the engine is stuck
    idle_timeout_s: float = 300.0  # a WebSocket with no client message for this long is closed
    cache_bytes: int = 64 * 1024 * 1024  # phrase cache size (0: no cache)
    prewarm: Optional[Path] = None  # file of phrases (one a line) synthesized into the cache at start
    # user lexicon, word<TAB>toned pinyin a line (streamtts/text/lexicon.py); create_app reads it
    # once, for this app's engine only
    lexicon: Optional[Path] = None
    static_dir: Optional[Path] = DEFAULT_STATIC_DIR  # the web page; None: do not serve files
    # torch intra-op threads (process-wide; 0: auto = 1 when the acoustic backend is torch, whose
    # decoder ops are tiny: a second thread's synchronisation costs more than it computes, many
    # times over on a busy machine; else torch's default, for the torch vocoders' large convolutions).
    torch_threads: int = 0
    block_first: int = 24  # decoder steps of a chunk's first block (fast first audio) ...
    block_rest: int = 32  # ... and of later blocks: the scheduler's unit of work
    # Wyoming protocol (Home Assistant) on this TCP port, in the same process and scheduler
    # (streamtts/server/wyoming.py): None = off, 0 = any free port; host None = `host`.
    wyoming_port: Optional[int] = None
    wyoming_host: Optional[str] = None
