"""Voice pack: fetch ttskit's models from PyPI, read them without executing them, convert."""

from streamtts.pack.store import VoicePack, ensure_pack, home

__all__ = ["VoicePack", "ensure_pack", "home"]
