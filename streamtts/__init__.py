"""streamtts: streaming, real-time Chinese text-to-speech."""

__version__ = "0.1.0"
