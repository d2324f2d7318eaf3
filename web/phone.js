// callbridge browser phone: talk to the agent from this browser.
//
// The page plays Twilio's part of the Media Streams protocol over a WebSocket to the bridge:
// `connected`, `start` (streamSid, callSid, audio/x-mulaw 8000 1, customParameters with the
// stream token), a `media` frame of 20 ms 8 kHz μ-law every 20 ms, `mark` echoed once the
// agent audio before it has been played (or at once, marked as not played, after `clear`),
// `dtmf` from the keypad and `stop` on hang-up. Audio runs in an AudioWorklet
// (/dashboard/phone-worklet.js): resampling, μ-law and the playout queue.
'use strict';

(() => {
  const KEYS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '0', '#'];
  const WORKLET_URL = '/dashboard/phone-worklet.js';

  function hex(n) {
    const b = new Uint8Array(n);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  function toBase64(bytes) {
    let s = '';
    for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s);
  }

  function fromBase64(b64) {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  function freshStats() {
    return {
      state: 'idle',
      callSid: null,
      sampleRate: null,
      framesSent: 0,
      agentFrames: 0,
      agentBytes: 0,
      agentMsPlayed: 0,
      queuedMs: 0,
      marksReceived: 0,
      marksEchoed: 0,
      marksCleared: 0,
      clears: 0,
      dtmfSent: 0,
      badMessages: 0,
      closeCode: null,
      closeReason: null,
      voiceProcessing: null,
    };
  }

  /** One browser-phone call at a time, bound to the dashboard's elements. */
  class BrowserPhone {
    constructor(opts) {
      this.apiJson = opts.apiJson; // (path, init) => Promise<json>, with the operator token
      this.toast = opts.toast || (() => {});
      this.el = {
        call: document.getElementById('phone-call'),
        hangup: document.getElementById('phone-hangup'),
        status: document.getElementById('phone-status'),
        level: document.getElementById('phone-level'),
        keypad: document.getElementById('phone-keypad'),
        stats: document.getElementById('phone-stats'),
        processing: document.getElementById('phone-processing'),
      };
      this.stats = freshStats();
      this.lastStats = null;
      this.ws = null;
      this.ctx = null;
      this.node = null;
      this.media = null;
      this.seq = 0;
      this.chunk = 0;
      this.streaming = false;
      this.outputDelayMs = 0;
      this.el.call.addEventListener('click', () => this.start());
      this.el.hangup.addEventListener('click', () => this.hangUp());
      for (const k of KEYS) {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'btn btn-quiet btn-small';
        b.textContent = k;
        b.dataset.testid = 'dtmf-' + k;
        b.disabled = true;
        b.addEventListener('click', () => this.dtmf(k));
        this.el.keypad.appendChild(b);
      }
      this.render();
    }

    setState(state, detail) {
      this.stats.state = state;
      this.el.status.dataset.state = state;
      this.el.status.textContent = detail ? `${state}: ${detail}` : state;
      const active = state === 'starting' || state === 'connecting' || state === 'in-call';
      this.el.call.disabled = active;
      this.el.hangup.disabled = !active;
      if (this.el.processing) this.el.processing.disabled = active;
      for (const b of this.el.keypad.querySelectorAll('button')) b.disabled = state !== 'in-call';
      this.render();
    }

    render() {
      const s = this.stats;
      const rows = [
        ['Frames sent', s.framesSent, 'framesSent'],
        ['Agent audio received', `${(s.agentBytes / 8).toFixed(0)} ms`, 'agentBytes'],
        ['Agent audio played', `${s.agentMsPlayed} ms`, 'agentMsPlayed'],
        ['Queued to play', `${s.queuedMs} ms`, 'queuedMs'],
        ['Marks echoed (played / cleared)', `${s.marksEchoed - s.marksCleared} / ${s.marksCleared}`, 'marksEchoed'],
        ['Clears', s.clears, 'clears'],
        ['Audio context', s.sampleRate ? `${s.sampleRate} Hz` : '–', 'sampleRate'],
      ];
      const frag = document.createDocumentFragment();
      for (const [label, value, key] of rows) {
        const dt = document.createElement('dt');
        dt.textContent = label;
        const dd = document.createElement('dd');
        dd.textContent = String(value);
        dd.dataset.stat = key;
        frag.append(dt, dd);
      }
      this.el.stats.replaceChildren(frag);
    }

    send(obj) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
    }

    nextSeq() {
      this.seq += 1;
      return String(this.seq);
    }

    async start() {
      if (this.ws) return;
      this.stats = freshStats();
      this.setState('starting', 'microphone');
      try {
        // The browser's voice processing (on by default) keeps the agent's voice from the
        // speakers out of the microphone; with a headset the raw signal is cleaner.
        const processing = !this.el.processing || this.el.processing.checked;
        this.media = await navigator.mediaDevices.getUserMedia({
          audio: {
            channelCount: 1,
            echoCancellation: processing,
            noiseSuppression: processing,
            autoGainControl: processing,
          },
          video: false,
        });
        this.stats.voiceProcessing = processing;
        this.ctx = new AudioContext({ latencyHint: 'interactive' });
        await this.ctx.audioWorklet.addModule(WORKLET_URL);
        this.node = new AudioWorkletNode(this.ctx, 'callbridge-phone', {
          numberOfInputs: 1,
          numberOfOutputs: 1,
          outputChannelCount: [1],
        });
        this.node.port.onmessage = (e) => this.onWorklet(e.data);
        this.ctx.createMediaStreamSource(this.media).connect(this.node);
        this.node.connect(this.ctx.destination);
        if (this.ctx.state !== 'running') await this.ctx.resume();
        this.stats.sampleRate = this.ctx.sampleRate;
        const lat = (this.ctx.outputLatency || 0) + (this.ctx.baseLatency || 0);
        this.outputDelayMs = Math.max(0, Math.min(500, Math.round(lat * 1000)));

        this.setState('connecting', 'ticket');
        const t = await this.apiJson('/api/phone', { method: 'POST' });
        this.ticket = t;
        this.stats.callSid = t.call_sid;
        this.streamSid = 'MZ' + hex(16);
        const url = new URL(t.ws_path, location.href);
        url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
        this.setState('connecting', 'media stream');
        const ws = new WebSocket(url.href);
        this.ws = ws;
        ws.onopen = () => this.onOpen();
        ws.onmessage = (e) => this.onMessage(e.data);
        ws.onclose = (e) => this.onClose(e);
        ws.onerror = () => {};
      } catch (e) {
        this.cleanup();
        this.setState('failed', e && e.message ? e.message : String(e));
        this.toast('Browser phone: ' + (e && e.message ? e.message : e), true);
      }
    }

    onOpen() {
      const t = this.ticket;
      this.seq = 0;
      this.chunk = 0;
      this.send({ event: 'connected', protocol: 'Call', version: '1.0.0' });
      this.send({
        event: 'start',
        sequenceNumber: this.nextSeq(),
        start: {
          accountSid: t.account_sid,
          streamSid: this.streamSid,
          callSid: t.call_sid,
          tracks: ['inbound'],
          mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
          customParameters: { token: t.stream_token, client: 'dashboard' },
        },
        streamSid: this.streamSid,
      });
      this.streaming = true;
      this.setState('in-call');
    }

    onWorklet(msg) {
      switch (msg.type) {
        case 'frame': {
          if (!this.streaming) return;
          this.chunk += 1;
          this.send({
            event: 'media',
            sequenceNumber: this.nextSeq(),
            media: {
              track: 'inbound',
              chunk: String(this.chunk),
              timestamp: String((this.chunk - 1) * 20),
              payload: toBase64(msg.ulaw),
            },
            streamSid: this.streamSid,
          });
          this.stats.framesSent += 1;
          if (this.stats.framesSent % 25 === 0) this.render();
          break;
        }
        case 'mark': {
          // Played marks go back once the audio has left the speakers (output latency).
          const echo = () => {
            if (!this.streaming) return;
            this.send({
              event: 'mark',
              sequenceNumber: this.nextSeq(),
              streamSid: this.streamSid,
              mark: { name: msg.name },
            });
            this.stats.marksEchoed += 1;
            if (msg.cleared) this.stats.marksCleared += 1;
            this.render();
          };
          if (msg.cleared || this.outputDelayMs === 0) echo();
          else setTimeout(echo, this.outputDelayMs);
          break;
        }
        case 'level':
          this.el.level.value = Math.min(1, msg.rms * 4);
          break;
        case 'played':
          this.stats.agentMsPlayed = msg.ms;
          this.stats.queuedMs = msg.queuedMs;
          break;
      }
    }

    onMessage(data) {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch (_) {
        this.stats.badMessages += 1;
        return;
      }
      if (!msg || msg.streamSid !== this.streamSid) {
        this.stats.badMessages += 1;
        return;
      }
      switch (msg.event) {
        case 'media': {
          const payload = msg.media && msg.media.payload;
          if (typeof payload !== 'string') {
            this.stats.badMessages += 1;
            return;
          }
          const ulaw = fromBase64(payload);
          this.stats.agentFrames += 1;
          this.stats.agentBytes += ulaw.length;
          this.node.port.postMessage({ type: 'play', ulaw }, [ulaw.buffer]);
          break;
        }
        case 'mark':
          if (!msg.mark || typeof msg.mark.name !== 'string') {
            this.stats.badMessages += 1;
            return;
          }
          this.stats.marksReceived += 1;
          this.node.port.postMessage({ type: 'mark', name: msg.mark.name });
          break;
        case 'clear':
          this.stats.clears += 1;
          this.node.port.postMessage({ type: 'clear' });
          break;
        default:
          this.stats.badMessages += 1;
      }
    }

    dtmf(digit) {
      if (!this.streaming) return;
      this.send({
        event: 'dtmf',
        streamSid: this.streamSid,
        sequenceNumber: this.nextSeq(),
        dtmf: { track: 'inbound_track', digit },
      });
      this.stats.dtmfSent += 1;
    }

    hangUp() {
      if (this.ws && this.streaming) {
        this.send({
          event: 'stop',
          sequenceNumber: this.nextSeq(),
          streamSid: this.streamSid,
          stop: { accountSid: this.ticket.account_sid, callSid: this.ticket.call_sid },
        });
      }
      this.streaming = false;
      if (this.ws) this.ws.close(1000, 'caller hung up');
      if (this.stats.state !== 'ended') this.setState('ending');
    }

    onClose(e) {
      this.streaming = false;
      this.stats.closeCode = e.code;
      this.stats.closeReason = e.reason || null;
      this.cleanup();
      const why = e.reason || (e.code === 1000 ? 'hung up' : `connection closed (${e.code})`);
      this.setState('ended', why);
    }

    cleanup() {
      this.streaming = false;
      if (this.node) {
        this.node.port.postMessage({ type: 'stop' });
        this.node.disconnect();
      }
      if (this.media) for (const tr of this.media.getTracks()) tr.stop();
      if (this.ctx) this.ctx.close().catch(() => {});
      this.el.level.value = 0;
      this.ws = null;
      this.node = null;
      this.media = null;
      this.ctx = null;
      this.lastStats = Object.assign({}, this.stats);
    }
  }

  /** Called by dashboard.js once signed in. */
  window.CallbridgePhone = {
    init(opts) {
      const phone = new BrowserPhone(opts);
      // For tests and the curious: the current call's counters.
      window.callbridgePhone = { stats: () => Object.assign({}, phone.stats), phone };
      return phone;
    },
  };
})();
