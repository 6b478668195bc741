"""Constants shared by the protocol, the server and the synthesis pipeline (no torch, no I/O)."""

from __future__ import annotations

__all__ = ["DEFAULT_SEED", "MIN_SPEED", "MAX_SPEED", "NATIVE_RATE"]

DEFAULT_SEED = 0  # seed of the prenet dropout when a request gives none
MIN_SPEED, MAX_SPEED = 0.5, 2.0  # speaking-rate factors a request may ask for
NATIVE_RATE = 22050  # Hz, the vocoder's output rate
