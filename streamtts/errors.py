"""Typed errors. Every error a user can cause carries a stable ``code`` (used by the CLI's exit
message, and later by the server's ``{"type": "error", "code": ...}`` events) and a message that
says what went wrong and what to do about it."""

from __future__ import annotations


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
