// Drives the operator dashboard and the browser phone in headless Chromium (Debian's
// /usr/bin/chromium through playwright-core; no browser download).
//
// Run by tests/browser.rs, which starts a bridge on the built-in Gemini simulator and talks to
// this script over a line protocol: this script prints `@@<request> [arg]` on stdout and reads
// one reply line on stdin:
//   @@place-phone-call            → the test starts a simulated Twilio caller; reply: its CallSid
// and finally prints `@@result <json>` with what it measured.
//
// Environment: BRIDGE_URL (http://127.0.0.1:port), OPERATOR_TOKEN, CHROMIUM (executable),
// FAKE_AUDIO_WAV (PCM WAV for the fake microphone), OUT_DIR (screenshots).

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is required`);
  return v;
};
const BRIDGE = env('BRIDGE_URL');
const TOKEN = env('OPERATOR_TOKEN');
const CHROMIUM = env('CHROMIUM');
const WAV = env('FAKE_AUDIO_WAV');
const OUT_DIR = env('OUT_DIR');
const T0 = Date.now();

function log(...args) {
  console.log(`[browser +${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...args);
}

// ---- line protocol with the Rust test
const stdinLines = readline.createInterface({ input: process.stdin });
const pending = [];
const queued = [];
stdinLines.on('line', (line) => {
  const waiter = pending.shift();
  if (waiter) waiter(line);
  else queued.push(line);
});
function ask(request) {
  console.log(`@@${request}`);
  return new Promise((resolve, reject) => {
    if (queued.length) return resolve(queued.shift());
    const timer = setTimeout(() => reject(new Error(`no reply to ${request}`)), 30_000);
    pending.push((line) => {
      clearTimeout(timer);
      resolve(line);
    });
  });
}

function check(cond, message) {
  if (!cond) throw new Error('check failed: ' + message);
}

async function apiGet(page, p) {
  return page.evaluate(
    async ([p, token]) => {
      const r = await fetch(p, { headers: { Authorization: 'Bearer ' + token } });
      return { status: r.status, body: await r.json() };
    },
    [p, TOKEN],
  );
}

async function waitFor(what, fn, timeoutMs = 20_000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const result = { screenshots: [], console_errors: [] };

async function main() {
  fs.mkdirSync(OUT_DIR, { recursive: true });
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'callbridge-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1440, height: 1000 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${WAV}%noloop`,
    ],
  });
  try {
    await run(context);
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

async function run(context) {
  await context.grantPermissions(['microphone'], { origin: BRIDGE });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(20_000);
  page.on('console', (m) => {
    if (m.type() === 'error') result.console_errors.push(m.text());
  });
  page.on('pageerror', (e) => result.console_errors.push('pageerror: ' + e.message));

  // 1. Without a token: the sign-in form; a wrong token is refused with the bridge's words.
  const first = await page.goto(`${BRIDGE}/dashboard`);
  const headers = first.headers();
  check(/script-src 'self'/.test(headers['content-security-policy'] || ''), 'CSP header on /dashboard');
  check(headers['x-content-type-options'] === 'nosniff', 'nosniff on /dashboard');
  await page.getByTestId('login').waitFor({ state: 'visible' });
  await page.getByTestId('token-input').fill('definitely-not-the-token');
  await page.getByTestId('token-submit').click();
  await page.getByTestId('login-error').waitFor({ state: 'visible' });
  const refused = await page.getByTestId('login-error').textContent();
  check(/token/i.test(refused), `wrong token refused with a message (got ${JSON.stringify(refused)})`);
  log('wrong token refused:', refused);

  // 2. With the token in the fragment: the dashboard connects to the event stream.
  await page.goto(`${BRIDGE}/dashboard#token=${encodeURIComponent(TOKEN)}`);
  await page.locator('[data-testid="conn-status"][data-state="live"]').waitFor();
  check(!page.url().includes('token='), 'token removed from the URL');
  log('dashboard live');

  // 3. A simulated phone call appears live and its transcript streams in.
  const callSid = await ask('place-phone-call');
  log('simulated phone call placed', callSid);
  const row = page.locator('[data-testid="live-call"][data-source="phone"]');
  await row.first().waitFor({ timeout: 20_000 });
  const phoneCallId = await row.first().getAttribute('data-call-id');
  log('phone call live on the dashboard:', phoneCallId);
  const live = page.locator(`[data-testid="live-call"][data-call-id="${phoneCallId}"]`);
  const sayings = new Set();
  const speakers = new Set();
  await waitFor(
    'the live transcript to stream agent and caller lines',
    async () => {
      const cell = live.getByTestId('live-transcript');
      const text = (await cell.textContent()) || '';
      const who = await cell.getAttribute('data-speaker');
      if (text) sayings.add(text);
      if (who) speakers.add(who);
      return speakers.has('agent') && speakers.has('caller') && sayings.size >= 3;
    },
    40_000,
    50,
  );
  result.phone_live_transcript_updates = sayings.size;
  log(`live transcript updated ${sayings.size} times (speakers: ${[...speakers].join(', ')})`);

  // Open the call's detail while it is live: the transcript grows there too.
  await live.click();
  await page.locator(`[data-testid="detail"][data-call-id="${phoneCallId}"][data-live="true"]`).waitFor();
  await page.locator('[data-testid="transcript-line"][data-speaker="caller"]').first().waitFor();
  await page.locator('[data-testid="transcript-line"][data-speaker="agent"]').first().waitFor();
  const liveShot = path.join(OUT_DIR, 'dashboard-live-call.png');
  await page.screenshot({ path: liveShot, fullPage: true });
  result.screenshots.push(liveShot);
  log('screenshot', liveShot);

  // 4. Transfer asks for a destination; one the call refuses comes back as the call's reason.
  await live.getByTestId('transfer').click();
  await page.getByTestId('transfer-dialog').waitFor({ state: 'visible' });
  await page.getByTestId('transfer-destination').fill('nowhere');
  await page.getByTestId('transfer-confirm').click();
  await page.locator('[data-testid="toast"][data-kind="error"]').waitFor();
  const refusal = await page.getByTestId('toast').textContent();
  check(/not a configured destination/.test(refusal), `transfer refusal shown (${refusal})`);
  log('transfer refused as expected:', refusal);

  // Hang it up from the dashboard.
  await live.getByTestId('hangup').click();
  await live.waitFor({ state: 'detached', timeout: 15_000 });
  const ended = page.locator(`[data-testid="recent-call"][data-call-id="${phoneCallId}"]`);
  await ended.waitFor();
  check((await ended.getAttribute('data-end-reason')) === 'operator_hung_up', 'recent row says operator_hung_up');
  const phoneRecord = await apiGet(page, `/api/calls/${phoneCallId}`);
  check(phoneRecord.status === 200, 'GET /api/calls/{id} of the ended call');
  check(phoneRecord.body.end_reason === 'operator_hung_up', `end_reason ${phoneRecord.body.end_reason}`);
  check(phoneRecord.body.source === 'phone', 'source phone');
  result.phone_call = {
    id: phoneCallId,
    end_reason: phoneRecord.body.end_reason,
    transcript_lines: phoneRecord.body.transcript.length,
    response_ms: phoneRecord.body.response_ms,
    tokens: phoneRecord.body.usage.total,
    cost_usd: phoneRecord.body.cost_usd,
  };
  log('hung up from the dashboard: end_reason', phoneRecord.body.end_reason);

  // The ended call's detail: final figures, transcript, timeline and its recording.
  await ended.click();
  await page.locator(`[data-testid="detail"][data-call-id="${phoneCallId}"][data-live="false"]`).waitFor();
  check(
    (await page.getByTestId('detail-end-reason').getAttribute('data-reason')) === 'operator_hung_up',
    'detail shows operator_hung_up',
  );
  await page.getByTestId('recording-load').click();
  await page.locator('[data-testid="detail-recording"][data-state="loaded"]').waitFor();
  const audioDuration = await waitFor('the recording to load in the player', () =>
    page.getByTestId('recording-audio').evaluate((a) => (a.readyState >= 1 && isFinite(a.duration) ? a.duration : 0)),
  );
  result.recording_player_seconds = Math.round(audioDuration * 10) / 10;
  check(audioDuration > 5, `the recording covers the call (${audioDuration} s)`);
  const detailShot = path.join(OUT_DIR, 'call-detail.png');
  await page.screenshot({ path: detailShot, fullPage: true });
  result.screenshots.push(detailShot);
  log('screenshot', detailShot, `(recording player: ${audioDuration.toFixed(1)} s)`);

  // 5. The browser phone: a call with the fake microphone through the same driver.
  await page.getByTestId('phone').waitFor({ state: 'visible' });
  // The fake microphone is a clean recording: send it as is (no echo cancellation or noise
  // suppression), so what the model hears can be compared with the clip sample by sample.
  await page.getByTestId('phone-processing').uncheck();
  const startedAt = Date.now();
  await page.getByTestId('phone-call').click();
  await page.locator('[data-testid="phone-status"][data-state="in-call"]').waitFor({ timeout: 15_000 });
  const browserRow = page.locator('[data-testid="live-call"][data-source="browser"]');
  await browserRow.first().waitFor({ timeout: 15_000 });
  const browserCallId = await browserRow.first().getAttribute('data-call-id');
  log('browser phone call live:', browserCallId);
  const stats = () => page.evaluate(() => window.callbridgePhone.stats());
  const firstAudio = await waitFor('agent audio to be played', async () => {
    const s = await stats();
    return s.agentMsPlayed > 0 ? Date.now() : 0;
  });
  result.browser_first_agent_audio_ms = firstAudio - startedAt;
  await browserRow.first().click();
  await page.locator(`[data-testid="detail"][data-call-id="${browserCallId}"]`).waitFor();
  // The caller side of the transcript comes from the fake microphone's speech.
  await page
    .locator('[data-testid="transcript-line"][data-speaker="caller"]')
    .first()
    .waitFor({ timeout: 30_000 });
  const callerLine = await page.locator('[data-testid="transcript-line"][data-speaker="caller"] .text').first().textContent();
  log('caller line from the fake microphone:', JSON.stringify(callerLine));
  // The agent's answer plays (marks echoed after playback) until the caller talks over it:
  // the bridge sends `clear`, the page drops the queued audio and returns pending marks.
  await waitFor(
    'the agent answer to play and be interrupted',
    async () => {
      const s = await stats();
      return s.clears >= 1 && s.marksEchoed - s.marksCleared >= 3 ? s : null;
    },
    30_000,
  );
  // The agent answers the interruption: a second caller line, then the agent speaks again.
  await waitFor(
    'the caller goodbye and the agent reply',
    async () => {
      const lines = await page.locator('[data-testid="transcript-line"]').evaluateAll((ls) => ls.map((l) => l.dataset.speaker));
      return lines.filter((w) => w === 'caller').length >= 2 && lines[lines.length - 1] === 'agent';
    },
    30_000,
  );
  const playedBefore = (await stats()).agentMsPlayed;
  await waitFor('the agent reply to be heard', async () => (await stats()).agentMsPlayed > playedBefore + 1500, 15_000);
  const phoneShot = path.join(OUT_DIR, 'browser-phone-call.png');
  await page.screenshot({ path: phoneShot, fullPage: true });
  result.screenshots.push(phoneShot);
  await page.getByTestId('phone-hangup').click();
  await page.locator('[data-testid="phone-status"][data-state="ended"]').waitFor({ timeout: 10_000 });
  const s = await stats();
  const browserEnded = page.locator(`[data-testid="recent-call"][data-call-id="${browserCallId}"]`);
  await browserEnded.waitFor();
  const browserRecord = await apiGet(page, `/api/calls/${browserCallId}`);
  check(browserRecord.status === 200, 'GET /api/calls/{id} of the browser call');
  const b = browserRecord.body;
  check(b.source === 'browser', `source ${b.source}`);
  check(b.end_reason === 'caller_hung_up', `browser call end_reason ${b.end_reason}`);
  check(b.transcript.some((l) => l.speaker === 'caller'), 'browser call record has a caller line');
  check(b.turns >= 3, `agent turns ${b.turns}`);
  check(b.barge_ins >= 1, `barge-ins ${b.barge_ins}`);
  check(s.clears >= 1, `clears ${s.clears}`);
  check(s.framesSent > 200, `frames sent ${s.framesSent}`);
  check(s.marksReceived >= 3 && s.marksEchoed >= 3, `marks ${s.marksReceived} received, ${s.marksEchoed} echoed`);
  check(s.badMessages === 0, `bad messages from the bridge: ${s.badMessages}`);
  result.browser_call = {
    id: browserCallId,
    end_reason: b.end_reason,
    caller_line: callerLine,
    turns: b.turns,
    barge_ins: b.barge_ins,
    response_ms: b.response_ms,
    tokens: b.usage.total,
    cost_usd: b.cost_usd,
    audio_context_hz: s.sampleRate,
    voice_processing: s.voiceProcessing,
    frames_sent: s.framesSent,
    agent_audio_received_ms: Math.round(s.agentBytes / 8),
    agent_audio_played_ms: s.agentMsPlayed,
    marks_received: s.marksReceived,
    marks_echoed: s.marksEchoed,
    marks_cleared: s.marksCleared,
    clears: s.clears,
  };
  log('browser call ended:', JSON.stringify(result.browser_call));

  // The wrong token (401) and the refused transfer (409) above log failed resource loads.
  const unexpected = result.console_errors.filter((e) => !/favicon|status of 40[19]/.test(e));
  check(unexpected.length === 0, 'no console errors: ' + JSON.stringify(unexpected));
}

main()
  .then(() => {
    console.log('@@result ' + JSON.stringify(result));
    process.exit(0);
  })
  .catch((e) => {
    console.error('BROWSER TEST FAILED:', e && e.stack ? e.stack : e);
    console.log('@@result ' + JSON.stringify(Object.assign(result, { error: String(e && e.message) })));
    process.exit(1);
  });
