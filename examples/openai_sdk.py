"""The official ``openai`` package against streamtts' OpenAI-compatible ``POST /v1/audio/speech``,
streamed to a WAV file as the audio arrives.

How to call (with ``streamtts serve`` running; ``pip install openai``)::

    python examples/openai_sdk.py ["要说的话"] [--base-url http://127.0.0.1:8000/v1] [--api-key K]
                                  [--voice alloy] [-o speech.wav]

The request asks for ``response_format="pcm"`` (24 kHz 16-bit mono, chunked as it is synthesized)
and each chunk is appended to a normal WAV file, so the file is complete and valid at the end.
(``response_format="wav"`` also works, e.g. with ``response.stream_to_file(path)``, but a
streamed WAV header cannot know the length, so it carries 0xFFFFFFFF sizes.) OpenAI voice names
(alloy, nova, ...) map to streamtts voices; streamtts names (``--voice Aiyue``) work too.
"""

from __future__ import annotations

import argparse
import os
import time
import wave

from openai import OpenAI

RATE = 24000  # the `pcm` format of the speech API


def main() -> None:
    p = argparse.ArgumentParser(description="OpenAI SDK -> streamtts /v1/audio/speech -> WAV")
    p.add_argument("text", nargs="?", default="你好，这是通过 OpenAI 接口合成的语音。今天天气很好。")
    p.add_argument("--base-url", default=os.environ.get("STREAMTTS_BASE_URL", "http://127.0.0.1:8000/v1"))
    p.add_argument("--api-key", default=os.environ.get("STREAMTTS_API_KEY") or "none",
                   help="the server's API key (any string when it has none)")
    p.add_argument("--voice", default="alloy")
    p.add_argument("-o", "--output", default="speech.wav")
    args = p.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    t0 = time.perf_counter()
    first = None
    n = 0
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=args.voice, input=args.text, response_format="pcm",
    ) as response, wave.open(args.output, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        carry = b""
        for chunk in response.iter_bytes():
            if first is None and chunk:
                first = time.perf_counter() - t0
            data = carry + chunk
            cut = len(data) - len(data) % 2  # HTTP chunks may split a sample
            out.writeframes(data[:cut])
            carry = data[cut:]
            n += cut
    total = time.perf_counter() - t0
    print(f"wrote {args.output}: {n / 2 / RATE:.2f} s of audio; first bytes after {1000 * (first or 0):.0f} ms, "
          f"all after {1000 * total:.0f} ms")


if __name__ == "__main__":
    main()
