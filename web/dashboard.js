// callbridge operator dashboard. Talks to the bridge's JSON API with the operator token
// (sessionStorage, or `#token=` in the URL once, for tests and bookmarks) and follows live
// changes over Server-Sent Events read with fetch (EventSource cannot send the token).
// Everything is rendered with textContent: call data never becomes markup.
'use strict';

(() => {
  const TOKEN_KEY = 'callbridge.operatorToken';
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    live: new Map(), // id -> summary (+ last_line)
    liveRows: new Map(), // id -> <tr>
    recent: [], // summaries, newest first
    nextBefore: null,
    selected: null,
    detail: null, // full record of the selected call
    detailTimer: null,
    events: null, // AbortController of the event stream
    retry: 0,
    phone: null,
    recordingUrl: null,
    transferFor: null,
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---------------------------------------------------------------- API

  async function api(path, init = {}) {
    const headers = Object.assign({ Authorization: 'Bearer ' + state.token }, init.headers || {});
    let resp;
    try {
      resp = await fetch(path, Object.assign({ cache: 'no-store' }, init, { headers }));
    } catch (e) {
      if (e && e.name === 'AbortError') throw e;
      throw new ApiError(0, 'cannot reach the bridge');
    }
    if (!resp.ok) {
      let msg = `${resp.status} ${resp.statusText}`;
      try {
        const j = await resp.json();
        if (j && typeof j.error === 'string') msg = j.error;
      } catch (_) {}
      // A refused token ends the session; the sign-in form says why.
      if (resp.status === 401) signOut(msg, resp.status);
      throw new ApiError(resp.status, msg);
    }
    return resp;
  }

  async function apiJson(path, init) {
    return (await api(path, init)).json();
  }

  // ---------------------------------------------------------------- formatting

  function fmtDuration(ms) {
    if (ms == null || ms < 0) return '–';
    const s = Math.floor(ms / 1000);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, '0');
    return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
  }
  const fmtCost = (usd) => '$' + (usd || 0).toFixed(4);
  const fmtMs = (ms) => (ms == null ? '–' : `${ms} ms`);
  const fmtInt = (n) => (n || 0).toLocaleString('en-US');
  function fmtClock(unixMs) {
    if (!unixMs) return '–';
    const d = new Date(unixMs);
    return d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }
  const fmtAt = (ms) => (ms / 1000).toFixed(1) + ' s';
  function percentile(values, p) {
    const v = values.filter((x) => typeof x === 'number').sort((a, b) => a - b);
    if (!v.length) return null;
    // Nearest rank.
    return v[Math.max(0, Math.ceil((p / 100) * v.length) - 1)];
  }
  function el(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') e.className = v;
      else if (k === 'testid') e.dataset.testid = v;
      else if (k === 'data') Object.assign(e.dataset, v);
      else if (k === 'text') e.textContent = v;
      else e[k] = v;
    }
    for (const c of children) e.append(c);
    return e;
  }

  let toastTimer = null;
  function toast(msg, isError) {
    const t = $('toast');
    t.textContent = msg;
    t.className = 'toast' + (isError ? ' toast-error' : '');
    t.dataset.kind = isError ? 'error' : 'ok';
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (t.hidden = true), 5000);
  }

  function setConn(kind, text) {
    const c = $('conn-status');
    c.dataset.state = kind;
    c.textContent = text || kind;
    c.className = 'pill ' + ({ live: 'pill-live', connecting: 'pill-warn', reconnecting: 'pill-warn', error: 'pill-err' }[kind] || 'pill-off');
  }

  // ---------------------------------------------------------------- sign-in

  function takeTokenFromFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!m) return;
    try {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    } catch (_) {}
    history.replaceState(null, '', location.pathname + location.search);
  }

  function signOut(message, status) {
    if (state.events) state.events.abort();
    state.events = null;
    state.token = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {}
    $('main').hidden = true;
    $('sign-out').hidden = true;
    $('login').hidden = false;
    setConn('signed-out', 'signed out');
    const err = $('login-error');
    if (message) {
      err.textContent = status === 503 ? `The bridge says: ${message}` : message;
      err.dataset.status = String(status || '');
      err.hidden = false;
    } else {
      err.hidden = true;
    }
  }

  async function signIn(token) {
    state.token = token;
    $('login-error').hidden = true;
    let calls;
    try {
      calls = await apiJson('/api/calls');
    } catch (e) {
      // 401 signed out already; 503: the bridge has no operator token configured.
      if (e.status !== 401) signOut(e.message, e.status);
      return;
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch (_) {}
    $('login').hidden = true;
    $('main').hidden = false;
    $('sign-out').hidden = false;
    applyLive(calls.calls);
    if (document.querySelector('meta[name="callbridge-browser-phone"]').content === 'on' && window.CallbridgePhone) {
      $('phone').hidden = false;
      if (!state.phone) state.phone = window.CallbridgePhone.init({ apiJson, toast });
    }
    loadRecent(false);
    openEvents();
  }

  // ---------------------------------------------------------------- event stream

  async function openEvents() {
    if (state.events) state.events.abort();
    const ctrl = new AbortController();
    state.events = ctrl;
    setConn('connecting', 'connecting…');
    try {
      const resp = await api('/api/events', { signal: ctrl.signal, headers: { Accept: 'text/event-stream' } });
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block
            .split('\n')
            .filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5).replace(/^ /, ''))
            .join('\n');
          if (!data) continue; // a keep-alive comment
          let msg;
          try {
            msg = JSON.parse(data);
          } catch (_) {
            continue;
          }
          onEvent(msg);
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
      if (e.status === 401 || e.status === 503) return;
    }
    if (ctrl.signal.aborted || state.events !== ctrl || !state.token) return;
    const delay = Math.min(30000, 500 * 2 ** state.retry);
    state.retry += 1;
    setConn('reconnecting', `reconnecting in ${Math.round(delay / 1000)} s`);
    setTimeout(() => {
      if (state.events === ctrl && state.token) openEvents();
    }, delay);
  }

  function onEvent(msg) {
    switch (msg.type) {
      case 'hello':
        state.retry = 0;
        setConn('live', 'live');
        refetchAll();
        break;
      case 'resync':
        refetchAll();
        break;
      case 'opened':
        upsertLive(msg.data);
        break;
      case 'changed': {
        const prev = state.live.get(msg.id);
        if (prev) upsertLive(Object.assign({}, msg.data, { last_line: prev.last_line }));
        if (msg.id === state.selected) scheduleDetail();
        break;
      }
      case 'transcript': {
        const prev = state.live.get(msg.id);
        if (prev) {
          const cur = prev.last_line;
          if (!cur || msg.data.index >= cur.index) upsertLive(Object.assign({}, prev, { last_line: msg.data }));
        }
        if (msg.id === state.selected && state.detail) {
          state.detail.transcript[msg.data.index] = { at_ms: msg.data.at_ms, speaker: msg.data.speaker, text: msg.data.text };
          renderTranscriptLine(msg.data.index, state.detail.transcript[msg.data.index]);
        }
        break;
      }
      case 'timeline':
        if (msg.id === state.selected) scheduleDetail();
        break;
      case 'ended':
        removeLive(msg.id);
        state.recent = [msg.data].concat(state.recent.filter((r) => r.id !== msg.id));
        renderRecent();
        if (msg.id === state.selected) scheduleDetail(0);
        break;
      case 'discarded':
        removeLive(msg.id);
        break;
    }
    renderFigures();
  }

  async function refetchAll() {
    try {
      const calls = await apiJson('/api/calls');
      applyLive(calls.calls);
    } catch (_) {}
    loadRecent(false);
    if (state.selected) scheduleDetail(0);
  }

  // ---------------------------------------------------------------- live calls

  function applyLive(list) {
    const seen = new Set();
    for (const c of list) {
      seen.add(c.id);
      upsertLive(c);
    }
    for (const id of Array.from(state.live.keys())) if (!seen.has(id)) removeLive(id);
    renderFigures();
  }

  function upsertLive(summary) {
    if (summary.live === false) return;
    state.live.set(summary.id, summary);
    let tr = state.liveRows.get(summary.id);
    if (!tr) {
      tr = buildLiveRow(summary.id);
      state.liveRows.set(summary.id, tr);
      $('live-calls').appendChild(tr);
    }
    fillLiveRow(tr, summary);
    $('live-empty').hidden = state.live.size > 0;
  }

  function removeLive(id) {
    state.live.delete(id);
    const tr = state.liveRows.get(id);
    if (tr) tr.remove();
    state.liveRows.delete(id);
    $('live-empty').hidden = state.live.size > 0;
  }

  function buildLiveRow(id) {
    const tr = el('tr', { testid: 'live-call', data: { callId: id } });
    const cells = ['source', 'from', 'duration', 'turns', 'barge-ins', 'tokens', 'cost', 'response'].map((k) =>
      el('td', { data: { field: k } }),
    );
    const saying = el('td', { class: 'now-saying', testid: 'live-transcript' });
    const hang = el('button', { type: 'button', class: 'btn btn-danger btn-small', text: 'Hang up', testid: 'hangup' });
    const xfer = el('button', { type: 'button', class: 'btn btn-quiet btn-small', text: 'Transfer', testid: 'transfer' });
    hang.addEventListener('click', (e) => {
      e.stopPropagation();
      hangUp(id);
    });
    xfer.addEventListener('click', (e) => {
      e.stopPropagation();
      askTransfer(id);
    });
    const actions = el('td', {}, el('div', { class: 'row-actions' }, hang, xfer));
    tr.append(...cells, saying, actions);
    tr.addEventListener('click', () => selectCall(id));
    return tr;
  }

  function fillLiveRow(tr, s) {
    const set = (field, text) => {
      const td = tr.querySelector(`td[data-field="${field}"]`);
      if (td.textContent !== text) td.textContent = text;
    };
    tr.dataset.source = s.source;
    set('source', s.source);
    set('from', s.from || (s.source === 'browser' ? 'browser phone' : '–'));
    set('duration', fmtDuration(Date.now() - s.started_at_ms));
    set('turns', String(s.turns));
    set('barge-ins', String(s.barge_ins));
    set('tokens', fmtInt(s.tokens));
    set('cost', fmtCost(s.cost_usd));
    set('response', fmtMs(s.response_ms_median));
    const saying = tr.querySelector('[data-testid="live-transcript"]');
    const line = s.last_line;
    if (line) {
      saying.replaceChildren(
        el('div', { class: 'clamp', title: line.text }, el('span', { class: 'speaker', text: line.speaker + ':' }), document.createTextNode(line.text)),
      );
      saying.dataset.speaker = line.speaker;
    } else {
      saying.textContent = '';
    }
    tr.classList.toggle('selected', s.id === state.selected);
  }

  setInterval(() => {
    for (const [id, s] of state.live) {
      const tr = state.liveRows.get(id);
      if (tr) tr.querySelector('td[data-field="duration"]').textContent = fmtDuration(Date.now() - s.started_at_ms);
    }
  }, 1000);

  // ---------------------------------------------------------------- recent calls

  async function loadRecent(more) {
    const q = new URLSearchParams({ limit: '50' });
    if (more && state.nextBefore) q.set('before', String(state.nextBefore));
    try {
      const r = await apiJson('/api/records?' + q.toString());
      state.recent = more ? state.recent.concat(r.records) : r.records;
      state.nextBefore = r.next_before;
      renderRecent();
      renderFigures();
    } catch (e) {
      if (e.status && e.status !== 401) toast('Recent calls: ' + e.message, true);
    }
  }

  function renderRecent() {
    const body = $('recent-calls');
    const frag = document.createDocumentFragment();
    for (const r of state.recent) {
      const tr = el(
        'tr',
        { testid: 'recent-call', data: { callId: r.id, endReason: r.end_reason || '', source: r.source } },
        el('td', { text: fmtClock(r.started_at_ms) }),
        el('td', { text: r.source }),
        el('td', { text: r.from || (r.source === 'browser' ? 'browser phone' : '–') }),
        el('td', { text: fmtDuration((r.ended_at_ms || Date.now()) - r.started_at_ms) }),
        el('td', { text: r.end_reason || '–', data: { field: 'end-reason' } }),
        el('td', { text: String(r.turns) }),
        el('td', { text: fmtInt(r.tokens) }),
        el('td', { text: fmtCost(r.cost_usd) }),
        el('td', { text: fmtMs(r.response_ms_median) }),
      );
      if (r.id === state.selected) tr.classList.add('selected');
      tr.addEventListener('click', () => selectCall(r.id));
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    $('recent-empty').hidden = state.recent.length > 0;
    $('recent-more').hidden = !state.nextBefore;
  }

  function renderFigures() {
    const all = Array.from(state.live.values()).concat(state.recent);
    $('fig-live').textContent = String(state.live.size);
    $('fig-recent').textContent = String(state.recent.length);
    $('fig-cost').textContent = fmtCost(all.reduce((a, c) => a + (c.cost_usd || 0), 0));
    $('fig-tokens').textContent = fmtInt(all.reduce((a, c) => a + (c.tokens || 0), 0));
    const medians = all.map((c) => c.response_ms_median);
    const p50 = percentile(medians, 50);
    const p90 = percentile(medians, 90);
    $('fig-latency').textContent = p50 == null ? '–' : `${p50} / ${p90} ms`;
  }

  // ---------------------------------------------------------------- call detail

  function selectCall(id) {
    state.selected = id;
    state.detail = null;
    for (const tr of document.querySelectorAll('tr[data-call-id]')) tr.classList.toggle('selected', tr.dataset.callId === id);
    $('detail').hidden = false;
    $('detail-id').textContent = id;
    $('detail-transcript').replaceChildren();
    resetRecording();
    scheduleDetail(0);
  }

  function closeDetail() {
    state.selected = null;
    state.detail = null;
    $('detail').hidden = true;
    resetRecording();
    for (const tr of document.querySelectorAll('tr.selected')) tr.classList.remove('selected');
  }

  function scheduleDetail(delay = 400) {
    clearTimeout(state.detailTimer);
    state.detailTimer = setTimeout(loadDetail, delay);
  }

  async function loadDetail() {
    const id = state.selected;
    if (!id) return;
    try {
      const r = await apiJson('/api/calls/' + encodeURIComponent(id));
      if (state.selected !== id) return;
      state.detail = r;
      renderDetail(r);
    } catch (e) {
      if (state.selected === id) toast('Call detail: ' + e.message, true);
    }
  }

  function renderDetail(r) {
    const d = $('detail');
    d.dataset.callId = r.id;
    d.dataset.live = String(r.live);
    const st = $('detail-state');
    st.textContent = r.live ? 'live' : 'ended';
    st.className = 'pill ' + (r.live ? 'pill-live' : '');
    $('detail-source').textContent = r.source === 'browser' ? 'browser phone' : 'phone';
    $('detail-from').textContent = r.from ? `from ${r.from}` : '';
    const er = $('detail-end-reason');
    er.textContent = r.end_reason ? `ended: ${r.end_reason}` : '';
    er.dataset.reason = r.end_reason || '';

    const actions = $('detail-actions');
    actions.replaceChildren();
    if (r.live) {
      const hang = el('button', { type: 'button', class: 'btn btn-danger', text: 'Hang up', testid: 'detail-hangup' });
      hang.addEventListener('click', () => hangUp(r.id));
      const xfer = el('button', { type: 'button', class: 'btn btn-quiet', text: 'Transfer…', testid: 'detail-transfer' });
      xfer.addEventListener('click', () => askTransfer(r.id));
      actions.append(hang, xfer);
    }

    const rt = r.response_ms || [];
    const tokens = (side) =>
      Object.entries((r.usage && r.usage[side]) || {})
        .map(([m, n]) => `${m.toLowerCase()} ${fmtInt(n)}`)
        .join(', ') || '–';
    const figures = [
      ['Started', fmtClock(r.started_at_ms), 'started'],
      ['Duration', fmtDuration((r.ended_at_ms || Date.now()) - r.started_at_ms), 'duration'],
      ['Agent turns / barge-ins', `${r.turns} / ${r.barge_ins}`, 'turns'],
      ['Model sessions', String(r.sessions), 'sessions'],
      ['Response time p50 / p90 / max', rt.length ? `${percentile(rt, 50)} / ${percentile(rt, 90)} / ${Math.max(...rt)} ms` : '–', 'response'],
      ['Response times', rt.length ? rt.join(', ') + ' ms' : '–', 'response-all'],
      ['Tokens in', tokens('prompt'), 'tokens-in'],
      ['Tokens out', tokens('response'), 'tokens-out'],
      ['Tokens total', fmtInt(r.usage && r.usage.total), 'tokens'],
      ['Estimated cost', fmtCost(r.cost_usd), 'cost'],
      ['CallSid', r.call_sid || '–', 'call-sid'],
    ];
    if (r.end_detail) figures.push(['End detail', r.end_detail, 'end-detail']);
    const dl = $('detail-figures');
    dl.replaceChildren(
      ...figures.flatMap(([k, v, key]) => [el('dt', { text: k }), el('dd', { text: v, data: { figure: key } })]),
    );

    const tx = $('detail-transcript');
    tx.replaceChildren();
    r.transcript.forEach((line, i) => renderTranscriptLine(i, line));
    if (r.transcript_truncated) tx.appendChild(el('p', { class: 'muted', text: '(transcript truncated)' }));
    if (!r.transcript.length) tx.appendChild(el('p', { class: 'muted', text: 'No transcript (yet).', data: { empty: 'true' } }));

    const tools = $('detail-tools');
    tools.replaceChildren(
      ...r.tool_calls.map((t) =>
        el(
          'tr',
          { testid: 'tool-call', data: { tool: t.name, outcome: t.outcome } },
          el('td', { text: fmtAt(t.at_ms) }),
          el('td', { text: t.name }),
          el('td', { class: 'mono', text: t.args == null ? '–' : JSON.stringify(t.args) }),
          el('td', { class: 'outcome-' + t.outcome, text: t.outcome }),
          el('td', { text: t.done_at_ms != null ? `${t.done_at_ms - t.at_ms} ms` : '–' }),
        ),
      ),
    );
    if (!r.tool_calls.length) tools.appendChild(el('tr', {}, el('td', { class: 'muted', text: 'none', colSpan: 5 })));

    const hand = $('detail-handovers');
    hand.replaceChildren(
      ...r.handovers.map((h) =>
        el(
          'tr',
          { testid: 'handover' },
          el('td', { text: fmtAt(h.at_ms) }),
          el('td', { text: h.reason }),
          el('td', { text: h.resumed ? 'yes' : 'no (fresh session)' }),
          el('td', { text: `${h.gap_ms} ms` }),
        ),
      ),
    );
    if (!r.handovers.length) hand.appendChild(el('tr', {}, el('td', { class: 'muted', text: 'none', colSpan: 4 })));

    $('detail-timeline').replaceChildren(
      ...r.timeline.map((t) => {
        const parts = Object.entries(t.detail || {})
          .filter(([, v]) => v !== null && v !== undefined)
          .map(([k, v]) => `${k.replace(/_/g, ' ')} ${typeof v === 'object' ? JSON.stringify(v) : v}`);
        const detail = parts.length ? ' — ' + parts.join(', ') : '';
        return el('li', { data: { kind: t.kind } }, el('span', { class: 'at', text: fmtAt(t.at_ms) }), document.createTextNode(t.kind + detail));
      }),
    );

    renderRecording(r);
  }

  function renderTranscriptLine(index, line) {
    const tx = $('detail-transcript');
    const empty = tx.querySelector('[data-empty]');
    if (empty) empty.remove();
    let div = tx.querySelector(`[data-index="${index}"]`);
    if (!div) {
      div = el('div', { class: 'line ' + line.speaker, testid: 'transcript-line', data: { index: String(index), speaker: line.speaker } });
      div.append(el('span', { class: 'who' }), el('span', { class: 'text' }));
      // Keep lines in index order.
      const after = Array.from(tx.querySelectorAll('[data-index]')).find((n) => Number(n.dataset.index) > index);
      tx.insertBefore(div, after || null);
    }
    div.querySelector('.who').textContent = `${line.speaker} · ${fmtAt(line.at_ms)}`;
    div.querySelector('.text').textContent = line.text;
    tx.scrollTop = tx.scrollHeight;
  }

  // ---------------------------------------------------------------- recording

  function resetRecording() {
    if (state.recordingUrl) URL.revokeObjectURL(state.recordingUrl);
    state.recordingUrl = null;
    const box = $('detail-recording');
    box.replaceChildren();
    box.dataset.state = 'none';
    box.dataset.callId = '';
  }

  function renderRecording(r) {
    const box = $('detail-recording');
    if (box.dataset.callId === r.id && (box.dataset.state === 'loaded' || box.dataset.state === 'loading')) return;
    resetRecording();
    box.dataset.callId = r.id;
    if (!r.recording) {
      box.dataset.state = 'none';
      box.appendChild(el('p', { class: 'muted', text: 'Not recorded (recording is off).' }));
    } else if (r.live) {
      box.dataset.state = 'live';
      box.appendChild(el('p', { class: 'muted', text: 'Available when the call ends.' }));
    } else {
      box.dataset.state = 'available';
      const b = el('button', { type: 'button', class: 'btn btn-quiet', text: 'Load recording', testid: 'recording-load' });
      b.addEventListener('click', () => loadRecording(r.id));
      box.appendChild(b);
    }
  }

  async function loadRecording(id) {
    const box = $('detail-recording');
    box.dataset.state = 'loading';
    try {
      const resp = await api('/api/calls/' + encodeURIComponent(id) + '/recording');
      const blob = await resp.blob();
      if (state.selected !== id) return;
      if (state.recordingUrl) URL.revokeObjectURL(state.recordingUrl);
      state.recordingUrl = URL.createObjectURL(blob);
      const audio = el('audio', { controls: true, src: state.recordingUrl, testid: 'recording-audio' });
      box.replaceChildren(audio, el('p', { class: 'muted', text: `Stereo WAV, ${(blob.size / 1024).toFixed(0)} KiB: caller left, agent right.` }));
      box.dataset.state = 'loaded';
    } catch (e) {
      box.dataset.state = 'missing';
      box.replaceChildren(el('p', { class: 'muted', text: 'Recording unavailable: ' + e.message }));
    }
  }

  // ---------------------------------------------------------------- actions

  async function hangUp(id) {
    try {
      await apiJson('/api/calls/' + encodeURIComponent(id) + '/hangup', { method: 'POST' });
      toast('Hang-up sent.');
    } catch (e) {
      toast('Hang-up failed: ' + e.message, true);
    }
  }

  function askTransfer(id) {
    state.transferFor = id;
    const input = $('transfer-destination');
    input.value = '';
    $('transfer-dialog').showModal();
    input.focus();
  }

  async function doTransfer() {
    const id = state.transferFor;
    const destination = $('transfer-destination').value.trim();
    $('transfer-dialog').close();
    if (!id || !destination) return;
    try {
      await apiJson('/api/calls/' + encodeURIComponent(id) + '/transfer', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ destination }),
      });
      toast('Transferred.');
    } catch (e) {
      toast('Transfer failed: ' + e.message, true);
    }
  }

  // ---------------------------------------------------------------- wiring

  function boot() {
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const t = $('token-input').value.trim();
      if (t) signIn(t);
    });
    $('sign-out').addEventListener('click', () => signOut());
    $('detail-close').addEventListener('click', closeDetail);
    $('recent-more').addEventListener('click', () => loadRecent(true));
    $('transfer-form').addEventListener('submit', (e) => {
      e.preventDefault();
      doTransfer();
    });
    $('transfer-cancel').addEventListener('click', () => $('transfer-dialog').close());
    // A `#token=` typed into an open dashboard's URL signs in without a reload.
    window.addEventListener('hashchange', () => {
      takeTokenFromFragment();
      let t = null;
      try {
        t = sessionStorage.getItem(TOKEN_KEY);
      } catch (_) {}
      if (t && t !== state.token) signIn(t);
    });
    takeTokenFromFragment();
    let token = null;
    try {
      token = sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {}
    if (token) signIn(token);
    else signOut();
  }

  boot();
})();
