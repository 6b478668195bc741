"""Audio for the wire and for files: PCM encoding and resampling (``codec``), the OpenAI response
formats (``encoders``), pacing to the listener's clock (``pacing``) and WAV files (``wav``).
Import the module you need; this package imports nothing heavy by itself."""
