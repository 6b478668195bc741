// AudioWorklet processor "pcm-player": plays mono float PCM pushed from the page, gap-free.
//
// How to call (page side):
//   await ctx.audioWorklet.addModule("pcm-player-worklet.js");
//   const node = new AudioWorkletNode(ctx, "pcm-player", {outputChannelCount: [1]});
//   node.connect(ctx.destination);
//   node.port.postMessage({type: "config", inputRate: 48000, startMs: 100, rebufferMs: 250});
//   node.port.postMessage({type: "samples", samples: f32}, [f32.buffer]);
//   node.port.postMessage({type: "flush"});          // drop everything buffered: silence now
//   node.port.postMessage({type: "reset"});          // flush and zero the played counter
//   node.port.postMessage({type: "idle"});           // no more samples come: play out the rest
//   node.port.onmessage = (e) => e.data;  // {type: "status", played, buffered, underruns}
//
// Samples go into a growable ring buffer and are read 128 frames per render quantum, so packets
// join sample-exactly. When the input rate differs from the context's, it is converted by linear
// interpolation. "played" counts input samples played since the last reset: the page's audio clock.
// Playback starts once startMs of audio is buffered (or the stream ended: "idle"); an underrun
// (the buffer runs dry while the stream goes on) plays silence, is counted, and rebuffers
// rebufferMs before playing on, so a slow network gives one pause instead of a stutter.

const REPORT_EVERY = 4; // render quanta between status messages (~11 ms at 48 kHz)

class PcmPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buf = new Float32Array(sampleRate * 8);
    this.read = 0; // index of the next sample to play
    this.size = 0; // samples buffered
    this.played = 0; // input samples played since reset
    this.underruns = 0; // times the buffer ran dry while a stream was still coming
    this.step = 1; // input samples per output sample
    this.inputRate = sampleRate;
    this.frac = 0; // position between buf[read] and buf[read + 1] when converting
    this.streaming = false; // more samples are expected: running dry is an underrun
    this.playing = false; // false: (re)buffering until `threshold` samples are there
    this.startMs = 100; // buffered before the first sample plays (jitter margin) ...
    this.rebufferMs = 250; // ... and after an underrun
    this.threshold = 0;
    this.quanta = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
    this.flush();
  }

  onMessage(m) {
    if (m.type === "samples") {
      this.push(m.samples);
      this.streaming = true;
    } else if (m.type === "flush" || m.type === "reset") {
      this.flush();
      if (m.type === "reset") {
        this.played = 0;
        this.underruns = 0;
      }
      this.report();
    } else if (m.type === "config") {
      this.inputRate = m.inputRate;
      this.step = m.inputRate / sampleRate;
      if (m.startMs !== undefined) this.startMs = m.startMs;
      if (m.rebufferMs !== undefined) this.rebufferMs = m.rebufferMs;
      this.threshold = Math.round((this.startMs * this.inputRate) / 1000);
    } else if (m.type === "idle") {
      this.streaming = false; // the stream ended: play out what is left, running dry is the end
    }
  }

  flush() {
    this.read = 0;
    this.size = 0;
    this.frac = 0;
    this.streaming = false;
    this.playing = false;
    this.threshold = Math.round((this.startMs * this.inputRate) / 1000);
  }

  push(samples) {
    const cap = this.buf.length;
    if (this.size + samples.length > cap) {
      const grown = new Float32Array(Math.max(2 * cap, this.size + samples.length));
      for (let i = 0; i < this.size; i++) grown[i] = this.buf[(this.read + i) % cap];
      this.buf = grown;
      this.read = 0;
    }
    const n = this.buf.length;
    const w = (this.read + this.size) % n;
    const first = Math.min(samples.length, n - w);
    this.buf.set(samples.subarray(0, first), w);
    if (first < samples.length) this.buf.set(samples.subarray(first), 0);
    this.size += samples.length;
  }

  take() {
    // consume one input sample
    this.read = (this.read + 1) % this.buf.length;
    this.size -= 1;
    this.played += 1;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.size > 0 && (this.size >= this.threshold || !this.streaming)) {
      this.playing = true;
    }
    let i = 0;
    if (this.playing) {
      const n = this.buf.length;
      if (this.step === 1) {
        const k = Math.min(out.length, this.size);
        for (; i < k; i++) {
          out[i] = this.buf[this.read];
          this.read = this.read + 1 === n ? 0 : this.read + 1;
        }
        this.size -= k;
        this.played += k;
      } else {
        for (; i < out.length && this.size >= 2; i++) {
          const a = this.buf[this.read];
          const b = this.buf[(this.read + 1) % n];
          out[i] = a + (b - a) * this.frac;
          this.frac += this.step;
          while (this.frac >= 1 && this.size >= 2) {
            this.frac -= 1;
            this.take();
          }
        }
        if (this.size === 1 && !this.streaming) {
          this.take(); // the very last sample of a stream
          this.frac = 0;
        }
      }
      if (i < out.length) {
        this.playing = false; // ran dry: the end, or an underrun that rebuffers
        if (this.streaming) {
          this.underruns += 1;
          this.threshold = Math.round((this.rebufferMs * this.inputRate) / 1000);
        }
      }
    }
    if (i < out.length) out.fill(0, i);
    if (++this.quanta % REPORT_EVERY === 0) this.report();
    return true;
  }

  report() {
    this.port.postMessage({
      type: "status", played: this.played, buffered: this.size, underruns: this.underruns,
      playing: this.playing,
    });
  }
}

registerProcessor("pcm-player", PcmPlayer);
