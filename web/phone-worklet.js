// callbridge browser phone: the audio thread (AudioWorkletProcessor).
//
// Input (the microphone, at the AudioContext's rate) is band-limited to 3.5 kHz and resampled
// to 8 kHz with a windowed-sinc interpolator, μ-law encoded, and posted to the page as 160-byte
// (20 ms) frames, one per 20 ms of audio clock: the Media Streams cadence.
//
// Output plays the agent's 8 kHz μ-law audio, resampled to the context's rate the same way.
// Marks are queued between audio like Twilio does: a mark is reported as "played" once all
// audio before it has been rendered; `clear` drops queued audio and reports every pending mark
// as "cleared". Nothing here touches the network; the page (phone.js) speaks the protocol.
'use strict';

const FRAME = 160; // 20 ms at 8 kHz
const PHASES = 128; // kernel table resolution per sample

// G.711 μ-law, as in ITU-T G.711 (same tables as the bridge's audio::g711).
const ULAW_TO_FLOAT = new Float32Array(256);
for (let i = 0; i < 256; i++) {
  const u = ~i & 0xff;
  const sign = u & 0x80;
  const exponent = (u >> 4) & 0x07;
  const mantissa = u & 0x0f;
  let s = (((mantissa << 3) + 0x84) << exponent) - 0x84;
  ULAW_TO_FLOAT[i] = (sign ? -s : s) / 32768;
}

function floatToUlaw(x) {
  let s = Math.round(Math.max(-1, Math.min(1, x)) * 32767);
  const sign = s < 0 ? 0x80 : 0;
  if (s < 0) s = -s;
  if (s > 32635) s = 32635;
  s += 0x84;
  let exponent = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; exponent--, mask >>= 1) {}
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

// A windowed-sinc (Blackman) low-pass kernel K(d), d in input samples over [-half, half],
// cutoff `fc` in cycles per input sample, tabulated at PHASES points per sample.
function makeKernel(fc, half) {
  const n = 2 * half * PHASES + 1;
  const table = new Float32Array(n + 1);
  for (let i = 0; i < n; i++) {
    const d = i / PHASES - half;
    const x = 2 * fc * d;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const w = 0.42 + 0.5 * Math.cos(Math.PI * d / half) + 0.08 * Math.cos(2 * Math.PI * d / half);
    table[i] = 2 * fc * sinc * w;
  }
  return { table, half };
}

// Σ x[k]·K(t−k) over the kernel's support; `get(k)` reads the signal (0 outside).
function interpolate(kernel, t, get) {
  const { table, half } = kernel;
  const k0 = Math.ceil(t - half);
  const k1 = Math.floor(t + half);
  let acc = 0;
  for (let k = k0; k <= k1; k++) {
    const pos = (t - k + half) * PHASES;
    const i = Math.floor(pos);
    const f = pos - i;
    const kv = table[i] + (table[i + 1] - table[i]) * f;
    acc += get(k) * kv;
  }
  return acc;
}

class CallbridgePhone extends AudioWorkletProcessor {
  constructor() {
    super();
    const rate = sampleRate; // the AudioContext's rate (global in the worklet scope)
    this.rate = rate;

    // Capture: ring of input samples, absolute index `inN` = samples written.
    this.inRing = new Float32Array(1 << 14);
    this.inMask = this.inRing.length - 1;
    this.inN = 0;
    this.inStep = rate / 8000;
    // Anti-alias: 3.5 kHz cutoff, ~900 Hz transition.
    this.inKernel = makeKernel(3500 / rate, Math.max(8, Math.ceil((5.5 * rate) / (2 * 900))));
    this.inT = 0; // next output instant, in input samples
    this.frame = new Uint8Array(FRAME);
    this.frameLen = 0;
    this.levelAcc = 0;
    this.levelN = 0;

    // Playout: ring of 8 kHz samples with absolute indices; `outW` written, `outP` (fractional)
    // the play position; samples below `outFloor` were cleared.
    this.outRing = new Float32Array(1 << 17); // ~16 s at 8 kHz
    this.outMask = this.outRing.length - 1;
    this.outW = 0;
    this.outP = 0;
    this.outFloor = 0;
    this.outStep = 8000 / rate;
    // Anti-image: 3.7 kHz cutoff on the 8 kHz grid, ~600 Hz transition.
    this.outKernel = makeKernel(3700 / 8000, Math.ceil((5.5 * 8000) / (2 * 600)));
    this.marks = []; // {name, pos}
    this.playedSamples = 0; // 8 kHz samples of agent audio rendered
    this.overflowed = 0;
    this.reportCountdown = 0;
    this.running = true;

    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    switch (msg.type) {
      case 'play': {
        const ulaw = msg.ulaw;
        if (this.outW + ulaw.length - Math.floor(this.outP) > this.outRing.length - 64) {
          this.overflowed += ulaw.length; // more than ~16 s queued: drop (the bridge never does this)
          return;
        }
        for (let i = 0; i < ulaw.length; i++) {
          this.outRing[(this.outW + i) & this.outMask] = ULAW_TO_FLOAT[ulaw[i]];
        }
        this.outW += ulaw.length;
        break;
      }
      case 'mark':
        this.marks.push({ name: msg.name, pos: this.outW });
        break;
      case 'clear': {
        // Drop everything queued; pending marks come back (not played), in order.
        for (const m of this.marks) this.port.postMessage({ type: 'mark', name: m.name, cleared: true });
        this.marks = [];
        this.outFloor = this.outW;
        this.outP = this.outW;
        break;
      }
      case 'stop':
        this.running = false;
        break;
    }
  }

  capture(input) {
    const ring = this.inRing;
    const mask = this.inMask;
    const n = input ? input.length : 128;
    for (let i = 0; i < n; i++) {
      const x = input ? input[i] : 0;
      ring[(this.inN + i) & mask] = x;
      this.levelAcc += x * x;
    }
    this.levelN += n;
    this.inN += n;
    const kernel = this.inKernel;
    const newest = this.inN - 1;
    const oldest = this.inN - ring.length;
    const get = (k) => (k > newest || k < 0 || k <= oldest ? 0 : ring[k & mask]);
    while (this.inT + kernel.half <= newest) {
      const y = interpolate(kernel, this.inT, get);
      this.inT += this.inStep;
      this.frame[this.frameLen++] = floatToUlaw(y);
      if (this.frameLen === FRAME) {
        const out = this.frame;
        this.port.postMessage({ type: 'frame', ulaw: out }, [out.buffer]);
        this.frame = new Uint8Array(FRAME);
        this.frameLen = 0;
      }
    }
    if (this.levelN >= this.rate / 10) {
      this.port.postMessage({ type: 'level', rms: Math.sqrt(this.levelAcc / this.levelN) });
      this.levelAcc = 0;
      this.levelN = 0;
    }
  }

  playout(out) {
    const ring = this.outRing;
    const mask = this.outMask;
    const kernel = this.outKernel;
    const w = this.outW;
    const floor = this.outFloor;
    const get = (k) => (k < floor || k >= w ? 0 : ring[k & mask]);
    for (let i = 0; i < out.length; i++) {
      // Marks whose audio has all been rendered.
      while (this.marks.length && this.marks[0].pos <= this.outP) {
        const m = this.marks.shift();
        this.port.postMessage({ type: 'mark', name: m.name, cleared: false });
      }
      if (this.outP < w) {
        out[i] = interpolate(kernel, this.outP, get);
        const before = Math.floor(this.outP);
        this.outP = Math.min(w, this.outP + this.outStep);
        this.playedSamples += Math.floor(this.outP) - before;
      } else {
        out[i] = 0;
      }
    }
    while (this.marks.length && this.marks[0].pos <= this.outP) {
      const m = this.marks.shift();
      this.port.postMessage({ type: 'mark', name: m.name, cleared: false });
    }
  }

  process(inputs, outputs) {
    if (!this.running) return false;
    const input = inputs[0] && inputs[0].length ? inputs[0][0] : null;
    this.capture(input);
    const output = outputs[0] && outputs[0][0];
    if (output) {
      this.playout(output);
      for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(output);
    }
    if (--this.reportCountdown <= 0) {
      this.reportCountdown = Math.ceil(this.rate / 128 / 4); // ~4 reports a second
      this.port.postMessage({
        type: 'played',
        ms: Math.round(this.playedSamples / 8),
        queuedMs: Math.round((this.outW - this.outP) / 8),
        overflowed: this.overflowed,
      });
    }
    return true;
  }
}

registerProcessor('callbridge-phone', CallbridgePhone);
