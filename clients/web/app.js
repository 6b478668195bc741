// streamtts web page: text in, audio streamed from GET /v1/stream and played by an AudioWorklet
// ("pcm-player", pcm-player-worklet.js) as it arrives; characters light up as they are spoken.
//
// One WebSocket per Speak: start {format: "pcm_f32le", sample_rate: the AudioContext's rate (or
// 48000, converted in the worklet)}, the text, end. Stop sends cancel and flushes the worklet at
// once; audio arriving before the server's "cancelled" is dropped.
//
// The page's audio clock is the number of samples the worklet has played since Speak; "segment"
// char times (ms from the session's first sample) are compared with it to highlight.
//
// State for tests and debugging, updated live:
//   window.streamtts = {state, ttfaMs, samplesReceived, samplesPlayed, highlighted, ...}
//   state: idle | connecting | speaking | stopping | stopped | done | error
"use strict";

(() => {
  const SERVER_RATES = [8000, 16000, 22050, 24000, 44100, 48000];
  const MAX_PIECE = 4000; // code points per text message (server limit 4096)
  const START_MS = 100; // audio buffered before playback starts (jitter margin)
  const REBUFFER_MS = 250; // and after an underrun
  const $ = (id) => document.getElementById(id);
  const ui = {
    text: $("text"), voice: $("voice"), speed: $("speed"), speedOut: $("speedOut"), apiKey: $("apiKey"),
    speak: $("speak"), stop: $("stop"), status: $("status"), ttfa: $("ttfa"), received: $("received"),
    played: $("played"), rate: $("rate"), spoken: $("spoken"), error: $("error"),
  };

  const st = {
    state: "idle", ttfaMs: null, playStartMs: null, serverTtfaMs: null, rtf: null, sampleRate: null, contextRate: null,
    samplesReceived: 0, samplesPlayed: 0, buffered: 0, underruns: 0, highlighted: 0, totalChars: 0,
    segments: 0, streamEnded: false, cancelled: false, samplesDropped: 0, framesAfterCancelled: 0,
    samplesAfterCancelled: 0, error: null, voices: [],
  };
  window.streamtts = st;

  let ctx = null; // AudioContext
  let node = null; // AudioWorkletNode "pcm-player"
  let ws = null; // the current WebSocket
  let session = 0; // bumped per Speak: handlers of older sockets do nothing
  let t0 = 0; // when the text was sent
  let chars = []; // code points of the text being spoken
  let spans = []; // one <span> per code point
  let marks = []; // {t, end, upto, now}: at t ms, chars [0, upto) are spoken, `now` is being spoken
  let cursor = 0; // where the next segment's text is searched
  let lit = 0; // spans [0, lit) carry the class "done"
  let nowSpan = null;

  // ---- audio ---------------------------------------------------------------------------------

  async function ensureAudio() {
    if (!ctx) {
      ctx = new AudioContext({ latencyHint: "interactive" });
      const resumed = ctx.resume(); // inside the click: the user gesture allows it
      await ctx.audioWorklet.addModule("pcm-player-worklet.js");
      node = new AudioWorkletNode(ctx, "pcm-player", { numberOfInputs: 0, outputChannelCount: [1] });
      node.connect(ctx.destination);
      node.port.onmessage = (e) => onStatus(e.data);
      st.contextRate = ctx.sampleRate;
      await resumed;
    } else if (ctx.state !== "running") {
      await ctx.resume();
    }
    const rate = SERVER_RATES.includes(ctx.sampleRate) ? ctx.sampleRate : 48000;
    node.port.postMessage({ type: "config", inputRate: rate, startMs: START_MS, rebufferMs: REBUFFER_MS });
    return rate;
  }

  function onStatus(m) {
    if (m.type !== "status") return;
    st.samplesPlayed = m.played;
    st.buffered = m.buffered;
    st.underruns = m.underruns;
    if (st.playStartMs === null && m.played > 0 && st.state === "speaking") st.playStartMs = performance.now() - t0;
    if (st.state === "speaking" && st.streamEnded && m.played >= st.samplesReceived) st.state = "done";
    highlight(st.state === "done" ? Infinity : playedMs());
    paint();
  }

  // ---- text and highlighting -----------------------------------------------------------------

  function renderText(text) {
    chars = Array.from(text);
    spans = chars.map((c) => {
      const s = document.createElement("span");
      s.textContent = c;
      return s;
    });
    ui.spoken.replaceChildren(...spans);
    marks = [];
    cursor = 0;
    lit = 0;
    nowSpan = null;
    st.totalChars = chars.length;
  }

  function findSub(hay, needle, from) {
    if (!needle.length) return -1;
    outer: for (let i = from; i + needle.length <= hay.length; i++) {
      for (let k = 0; k < needle.length; k++) if (hay[i + k] !== needle[k]) continue outer;
      return i;
    }
    return -1;
  }

  // A segment: find its text in ours (after the previous one), then each spoken char in it.
  // Chars the normalizer changed (digits, traditional forms) are not found and are lit with
  // the next found char or at the segment's end.
  function onSegment(m) {
    st.segments += 1;
    let seg = Array.from(m.text || "");
    let s = findSub(chars, seg, cursor);
    if (s < 0) {
      seg = Array.from((m.text || "").trim());
      s = findSub(chars, seg, cursor);
    }
    if (s < 0) s = cursor;
    const e = Math.min(chars.length, s + seg.length);
    let k = s;
    for (const c of m.chars || []) {
      let j = k;
      while (j < e && chars[j] !== c.char) j++;
      if (j < e) {
        marks.push({ t: c.start_ms, end: c.end_ms, upto: j + 1, now: j });
        k = j + 1;
      }
    }
    marks.push({ t: m.audio_end_ms, end: m.audio_end_ms, upto: e, now: -1 });
    marks.sort((a, b) => a.t - b.t);
    cursor = e;
  }

  function playedMs() {
    if (!st.sampleRate) return 0;
    const latency = ctx ? (ctx.baseLatency || 0) + (ctx.outputLatency || 0) : 0;
    return (1000 * st.samplesPlayed) / st.sampleRate - 1000 * latency;
  }

  function highlight(ms) {
    let upto = lit;
    let now = -1;
    for (const mk of marks) {
      if (mk.t > ms) break;
      if (mk.upto > upto) upto = mk.upto;
      now = mk.end > ms ? mk.now : -1;
    }
    for (; lit < upto; lit++) spans[lit].classList.add("done");
    const span = now >= 0 ? spans[now] : null;
    if (span !== nowSpan) {
      if (nowSpan) nowSpan.classList.remove("now");
      if (span) span.classList.add("now");
      nowSpan = span;
    }
    st.highlighted = lit;
  }

  // ---- session -------------------------------------------------------------------------------

  function apiKey() {
    return ui.apiKey.value.trim();
  }

  function reset(rate) {
    Object.assign(st, {
      state: "connecting", ttfaMs: null, playStartMs: null, serverTtfaMs: null, rtf: null, sampleRate: rate,
      samplesReceived: 0, samplesPlayed: 0, buffered: 0, underruns: 0, highlighted: 0, segments: 0,
      streamEnded: false, cancelled: false, samplesDropped: 0, framesAfterCancelled: 0,
      samplesAfterCancelled: 0, error: null,
    });
  }

  async function speak() {
    const text = ui.text.value;
    if (!text.trim()) {
      showError("type some text first");
      return;
    }
    showError(null);
    closeSocket();
    let rate;
    try {
      rate = await ensureAudio();
    } catch (err) {
      fail("audio", "cannot start audio: " + err.message);
      return;
    }
    const my = ++session;
    node.port.postMessage({ type: "reset" });
    reset(rate);
    renderText(text);
    paint();

    const url = new URL("/v1/stream", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (apiKey()) url.searchParams.set("api_key", apiKey());
    const sock = (ws = new WebSocket(url));
    sock.binaryType = "arraybuffer";

    sock.onopen = () => {
      const start = { type: "start", format: "pcm_f32le", sample_rate: rate, speed: Number(ui.speed.value) };
      if (ui.voice.value) start.voice = ui.voice.value;
      sock.send(JSON.stringify(start));
      t0 = performance.now();
      const cps = Array.from(text);
      for (let i = 0; i < cps.length; i += MAX_PIECE) {
        sock.send(JSON.stringify({ type: "text", text: cps.slice(i, i + MAX_PIECE).join("") }));
      }
      sock.send(JSON.stringify({ type: "end" }));
    };

    sock.onmessage = (e) => {
      if (my !== session) return;
      if (typeof e.data !== "string") {
        onAudio(e.data);
        return;
      }
      const m = JSON.parse(e.data);
      if (m.type === "queued") {
        st.queued = m.position;  // the server is at capacity: the text waits for a slot
      } else if (m.type === "ready") {
        if (st.state === "connecting") st.state = "speaking";
      } else if (m.type === "segment") {
        if (st.state === "speaking") onSegment(m);
      } else if (m.type === "cancelled") {
        st.cancelled = true;
        st.state = "stopped";
        // `end` was sent with the text: the server now sends `done` and closes; don't wait long
        setTimeout(() => sock.readyState === WebSocket.OPEN && sock.close(1000), 2000);
      } else if (m.type === "done") {
        st.streamEnded = true;
        st.serverTtfaMs = m.ttfa_ms;
        st.rtf = m.rtf;
        node.port.postMessage({ type: "idle" });
        if (st.state === "speaking" && st.samplesPlayed >= st.samplesReceived) {
          st.state = "done";
          highlight(Infinity);
        }
      } else if (m.type === "error") {
        if (m.fatal) fail(m.code, m.message);
        else showError(`${m.code}: ${m.message}`);
        st.error = m.code;
      }
      paint();
    };

    sock.onclose = (e) => {
      if (my !== session) return;
      ws = null;
      if (st.state === "connecting") {
        fail("connect", `cannot open the stream (${e.code})` + (apiKey() ? "" : ": an API key may be needed"));
      } else if (st.state === "stopping") {
        st.state = "stopped";
      } else if (!st.streamEnded && !st.cancelled && st.state === "speaking") {
        fail("closed", `the connection closed early (${e.code})`);
      }
      paint();
    };
  }

  function onAudio(buf) {
    const f = new Float32Array(buf);
    if (st.cancelled) {
      st.framesAfterCancelled += 1; // the protocol says this never happens
      st.samplesAfterCancelled += f.length;
      return;
    }
    if (st.state !== "speaking") {
      st.samplesDropped += f.length; // Stop pressed: the cancelled text's audio still in flight
      return;
    }
    if (st.ttfaMs === null) st.ttfaMs = performance.now() - t0;
    st.samplesReceived += f.length;
    node.port.postMessage({ type: "samples", samples: f }, [f.buffer]);
  }

  function stop() {
    if (node) node.port.postMessage({ type: "flush" }); // silence now
    if (st.state !== "speaking" && st.state !== "connecting") return;
    if (ws && ws.readyState === WebSocket.OPEN && !st.streamEnded) {
      st.state = "stopping";
      ws.send(JSON.stringify({ type: "cancel" }));
    } else {
      st.state = "stopped";
      closeSocket();
    }
    paint();
  }

  function closeSocket() {
    if (ws) {
      session++;
      try {
        ws.close(1000);
      } catch (err) {
        /* already closing */
      }
      ws = null;
    }
  }

  function fail(code, message) {
    st.state = "error";
    st.error = code;
    showError(message);
    if (node) node.port.postMessage({ type: "idle" });
  }

  // ---- view ----------------------------------------------------------------------------------

  function showError(message) {
    ui.error.hidden = !message;
    ui.error.textContent = message || "";
  }

  let painting = false;
  function paint() {
    if (painting) return;
    painting = true;
    requestAnimationFrame(() => {
      painting = false;
      const secs = (n) => (st.sampleRate ? (n / st.sampleRate).toFixed(2) + " s" : "–");
      // `queued` comes after `ready`, once the text waits for a stream slot: shown until audio comes
      ui.status.textContent = st.queued != null && st.samplesReceived === 0 && ["connecting", "speaking"].includes(st.state)
        ? `queued (${st.queued} ahead)` : st.state;
      ui.ttfa.textContent = st.ttfaMs === null ? "–" : `${Math.round(st.ttfaMs)} ms`;
      ui.received.textContent = secs(st.samplesReceived);
      ui.played.textContent = secs(st.samplesPlayed);
      ui.rate.textContent = st.sampleRate
        ? `${st.sampleRate} Hz` + (st.contextRate && st.contextRate !== st.sampleRate ? ` → ${st.contextRate}` : "")
        : "–";
      ui.stop.disabled = !["connecting", "speaking", "stopping"].includes(st.state);
    });
  }

  async function loadVoices() {
    const headers = apiKey() ? { Authorization: "Bearer " + apiKey() } : {};
    try {
      const r = await fetch("/v1/voices", { headers });
      if (r.status === 401) {
        showError("this server needs an API key");
        return;
      }
      if (!r.ok) throw new Error("HTTP " + r.status);
      const j = await r.json();
      const keep = ui.voice.value;
      ui.voice.replaceChildren(
        ...j.voices.map((v) => new Option(v.name + (v.default ? " (default)" : ""), v.name, false, keep ? v.name === keep : v.default)),
      );
      st.voices = j.voices.map((v) => v.name);
      showError(null);
    } catch (err) {
      showError("cannot list the voices: " + err.message);
    }
  }

  // ---- wiring --------------------------------------------------------------------------------

  const params = new URLSearchParams(location.search);
  if (params.get("api_key")) ui.apiKey.value = params.get("api_key");
  ui.speak.addEventListener("click", speak);
  ui.stop.addEventListener("click", stop);
  ui.apiKey.addEventListener("change", loadVoices);
  ui.speed.addEventListener("input", () => (ui.speedOut.textContent = Number(ui.speed.value).toFixed(1) + "×"));
  ui.text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) speak();
  });
  renderText(ui.text.value);
  paint();
  loadVoices();
})();
