"""Pacing: keep a stream at most ``max_lead_s`` of audio ahead of its listener's real-time clock.

Audio handed to a socket is not yet heard: the transport, the kernel's send buffer and the
client's receive buffer can hold minutes of it, and a cancel (or a keepalive pong) would queue
behind all of it. So a transport sends audio only while the listener's modelled play position is
less than ``max_lead_s`` behind what was sent. The model is a player that starts with the first
audio, plays at real time and, when it runs dry, waits (an underrun does not bank time)::

    pacer = Pacer(max_lead_s=2.0)
    wait = pacer.wait_s(now, secs)  # 0: send `secs` of audio now; else seconds until it may go
    pacer.sent(seconds, now)        # after handing `seconds` of audio to the transport
    pacer.lead_s(now)               # audio sent and not yet played, in seconds

Wall clock is what a player that reads at playback speed follows; a client that reads slower
still has the transport's own bounds (aiohttp drains its write buffer, and the server caps the
socket's send buffer) behind it. Pure: the caller passes ``now`` (``time.monotonic()``).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_LEAD_S = 2.0


@dataclass
class Pacer:
    max_lead_s: float = DEFAULT_MAX_LEAD_S  # <= 0: no pacing (send as fast as the transport takes it)
    _play_end: float = float("-inf")  # when the audio sent so far has been played

    def lead_s(self, now: float) -> float:
        return max(0.0, self._play_end - now)

    def wait_s(self, now: float, seconds: float = 0.0) -> float:
        """Seconds to wait before ``seconds`` more audio may be sent without the lead passing
        ``max_lead_s`` (0: send now). A piece longer than the lead itself waits for an empty
        lead, so it goes out, only late."""
        if self.max_lead_s <= 0:
            return 0.0
        lead = self.lead_s(now)
        return max(0.0, min(lead, lead + seconds - self.max_lead_s))

    def sent(self, seconds: float, now: float) -> None:
        """``seconds`` of audio (or silence) went to the transport at ``now``."""
        self._play_end = max(self._play_end, now) + seconds

    def reset(self) -> None:
        """The listener dropped what it had (a cancel): lead starts again from nothing."""
        self._play_end = float("-inf")
