//! The operator dashboard and the browser phone in a real browser: headless Chromium (Debian's
//! `chromium` package) driven by `playwright-core` from `tests/browser/dashboard.test.mjs`.
//!
//! This test starts a bridge on the built-in Gemini simulator (with a fake Twilio REST API),
//! then runs the script with node. The script loads `/dashboard` with the operator token, asks
//! this test to place a simulated Twilio call (the repo's simulated caller), watches it appear
//! live with its transcript streaming in, has a transfer refused, hangs it up from the
//! dashboard (record: `operator_hung_up`), opens its detail and recording, then places a browser-phone call with
//! Chromium's fake microphone (a WAV made here from the bundled caller clips): agent audio
//! received and played, marks echoed, caller transcript lines, a barge-in (`clear` drops the
//! queued agent audio), a clean end (record: source `browser`). Screenshots go to
//! `target/browser-test/`.
//!
//! Needs node (20+), `/usr/bin/chromium` (or env `CHROMIUM`) and `npm ci` in `tests/browser`.
//! When any is missing the test fails under `CI=true` and otherwise prints a loud skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use callbridge::config::{Secret, TransferDestination};
use callbridge::sim::caller::{Script, SimCaller};
use callbridge::sim::gemini::{Reply, Scenario, Turn};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use common::{asset, harness, ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL};

const OPERATOR_TOKEN: &str = "browser-test-operator-token-0123456789";
const HELLO: &str = "Hello, I am calling about my order. It has not arrived yet, can you help me?";
const BYE: &str = "Thanks, that is all. Goodbye.";

struct Tools {
    node: PathBuf,
    chromium: PathBuf,
    dir: PathBuf,
}

/// Finds node, Chromium and the script's node_modules; `None` (after a loud skip) when one is
/// missing outside CI.
fn prerequisites() -> Option<Tools> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let node = PathBuf::from(std::env::var("NODE").unwrap_or_else(|_| "node".into()));
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let mut missing = Vec::new();
    let node_ok = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !node_ok {
        missing.push(format!("node ({}) — install Node.js 20+", node.display()));
    }
    if !chromium.is_file() {
        missing.push(format!(
            "chromium ({}) — apt-get install -y chromium",
            chromium.display()
        ));
    }
    if !dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push(format!(
            "playwright-core — (cd {} && npm ci)",
            dir.display()
        ));
    }
    if missing.is_empty() {
        return Some(Tools {
            node,
            chromium,
            dir,
        });
    }
    let list = missing.join("\n  - ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("browser test prerequisites missing under CI=true:\n  - {list}\n(.ci/run installs them)");
    }
    eprintln!(
        "\n\
         ######################################################################\n\
         ## SKIPPED: tests/browser.rs (dashboard + browser phone in Chromium)\n\
         ## missing:\n  - {list}\n\
         ######################################################################\n"
    );
    None
}

/// Offset of the caller's question in the fake microphone's audio: after the greeting.
const QUESTION_AT_MS: usize = 5_500;
/// Offset of the caller's goodbye: a barge-in, about 2 s into the agent's long answer.
const BARGE_IN_AT_MS: usize = 14_000;

/// The fake microphone: quiet while the agent greets, the caller's question, quiet while the
/// agent answers, then the caller talks over the answer (barge-in), then quiet. 16-bit PCM
/// WAV at 16 kHz, made from the bundled clips (Chromium's fake capture device resamples it).
fn fake_microphone_wav(path: &Path) {
    let clip = |name: &str| {
        callbridge::audio::wav::read_wav_file(&asset(name))
            .expect("bundled caller clip")
            .to_pcm16()
    };
    let rate = 16_000usize;
    let mut samples = vec![0i16; rate * QUESTION_AT_MS / 1000];
    samples.extend_from_slice(&clip("caller_hello.ref16k.wav"));
    samples.resize(rate * BARGE_IN_AT_MS / 1000, 0);
    samples.extend_from_slice(&clip("caller_bye.ref16k.wav"));
    samples.extend(std::iter::repeat_n(0i16, rate * 4));
    callbridge::audio::wav::write_wav_pcm16(path, rate as u32, 1, &samples).expect("write WAV");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_browser_phone_in_chromium() {
    let Some(tools) = prerequisites() else {
        return;
    };
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-test");
    std::fs::create_dir_all(&out_dir).expect("target/browser-test");
    let wav = out_dir.join("fake-microphone.wav");
    fake_microphone_wav(&wav);
    let recordings = out_dir.join("recordings");
    let _ = std::fs::remove_dir_all(&recordings);
    std::fs::create_dir_all(&recordings).expect("recordings dir");

    // The agent greets, answers the question (the simulator transcribes the caller's speech as
    // HELLO once its VAD hears it), is interrupted by the goodbye, and answers that.
    let mut answer = Turn::reply(Reply::long());
    answer.caller = Some(HELLO.into());
    let mut again = Turn::reply(Reply::greeting());
    again.caller = Some(BYE.into());
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![answer, again],
        ..Scenario::default()
    };
    let recording_dir = recordings.display().to_string();
    let h = harness(
        |s| s.scenario(scenario),
        move |c| {
            c.operator.token = Secret::new(OPERATOR_TOKEN);
            c.recording.enabled = true;
            c.recording.dir = recording_dir;
            c.transfer.destinations.insert(
                "billing".into(),
                TransferDestination {
                    target: "+14155550100".into(),
                    description: "Billing".into(),
                    whisper: String::new(),
                },
            );
        },
    )
    .await;
    let bridge = format!("http://{}", h.addr);
    println!("bridge {bridge} (dashboard: {bridge}/dashboard)");

    let mut child = tokio::process::Command::new(&tools.node)
        .arg("dashboard.test.mjs")
        .current_dir(&tools.dir)
        .env("BRIDGE_URL", &bridge)
        .env("OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("CHROMIUM", &tools.chromium)
        .env("FAKE_AUDIO_WAV", &wav)
        .env("OUT_DIR", &out_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();

    let mut callers = Vec::new();
    let mut result: Option<serde_json::Value> = None;
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read node output") {
            let Some(request) = line.strip_prefix("@@") else {
                println!("{line}");
                continue;
            };
            let (verb, arg) = request.split_once(' ').unwrap_or((request, ""));
            let reply = match verb {
                "place-phone-call" => {
                    let call_sid = format!("CA{:032x}", rand::random::<u128>());
                    let script = Script::new()
                        .wait_for_agent(700, 15_000)
                        .say_ulaw("caller_hello", common::caller_clip("caller_hello"))
                        .silence(90_000);
                    let caller = SimCaller::builder()
                        .webhook(format!("http://{}/twilio/voice", h.addr))
                        .public_webhook_url(format!("{PUBLIC_URL}/twilio/voice"))
                        .connect_override(format!("ws://{}", h.addr))
                        .account_sid(ACCOUNT_SID)
                        .auth_token(AUTH_TOKEN)
                        .call_sid(&call_sid)
                        .script(script)
                        .max_duration(Duration::from_secs(100))
                        .spawn();
                    let trigger = caller.hang_up_trigger();
                    h.rest
                        .register_call(&call_sid, Arc::new(move |_| trigger()));
                    callers.push(caller);
                    call_sid
                }
                "result" => {
                    result = serde_json::from_str(arg).ok();
                    continue;
                }
                other => panic!("unknown request from the browser script: {other}"),
            };
            stdin
                .write_all(format!("{reply}\n").as_bytes())
                .await
                .expect("reply to node");
            stdin.flush().await.expect("flush");
        }
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("browser test finished within 4 minutes");
    let status = child.wait().await.expect("node exit");
    let result = result.expect("the browser script printed its result");
    println!(
        "browser test result:\n{}",
        serde_json::to_string_pretty(&result).unwrap_or_default()
    );
    assert!(status.success(), "browser script failed: {result}");
    for shot in result["screenshots"].as_array().into_iter().flatten() {
        println!("screenshot: {}", shot.as_str().unwrap_or_default());
    }

    // The bridge's side of the same story.
    let phone_id = result["phone_call"]["id"].as_str().expect("phone call id");
    let phone = h.state.journal.recent_call(phone_id).expect("phone record");
    assert_eq!(phone.end_reason.as_deref(), Some("operator_hung_up"));
    assert_eq!(phone.source, "phone");
    let browser_id = result["browser_call"]["id"]
        .as_str()
        .expect("browser call id");
    let browser = h
        .state
        .journal
        .recent_call(browser_id)
        .expect("browser record");
    assert_eq!(browser.source, "browser");
    assert_eq!(browser.end_reason.as_deref(), Some("caller_hung_up"));
    assert!(
        browser
            .transcript
            .iter()
            .any(|l| l.speaker == "caller" && l.text.contains("order")),
        "caller line from the fake microphone: {:?}",
        browser.transcript
    );
    assert!(browser.barge_ins >= 1, "the goodbye barged in");
    assert!((h.state.admission.live() == 0), "no call left running");

    // What the model heard from the browser's microphone: the caller clip, found by
    // cross-correlation in the 16 kHz audio the simulator received (fake capture device →
    // worklet resampler → μ-law → bridge uplink; the page turned the browser's voice
    // processing off). The phone call (μ-law straight from the simulated caller) is the
    // reference point.
    let reference = common::pcm("caller_hello.ref16k.wav");
    let rec = h.sim.record();
    assert_eq!(rec.connections.len(), 2, "one model session per call");
    let (phone_score, _) = common::find_in(&rec.connections[0].audio, &reference);
    let (browser_score, lag) = common::find_in(&rec.connections[1].audio, &reference);
    println!(
        "uplink match with the caller clip: browser phone {browser_score:.3} (at {:.2} s), \
         simulated phone {phone_score:.3}",
        lag as f64 / 16_000.0
    );
    assert!(
        browser_score > 0.9,
        "the model heard the fake microphone's speech (score {browser_score:.3})"
    );
    for c in callers {
        let _ = tokio::time::timeout(Duration::from_secs(10), c.join()).await;
    }
}
