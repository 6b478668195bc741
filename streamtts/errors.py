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
