"""streamtts for LiveKit Agents: ``from clients.livekit_tts import TTS`` (needs the ``livekit`` extra).

A ``livekit.agents.tts.TTS`` with streaming and aligned transcripts over the server's WebSocket,
one context per utterance on a shared socket (docs/protocol.md, "Contexts"). See tts.py.
"""

from .connection import StreamTTSError
from .tts import TTS, ChunkedStream, SynthesizeStream

__all__ = ["TTS", "ChunkedStream", "SynthesizeStream", "StreamTTSError"]
