//! Scripted conversations for the Gemini simulator: what the model says on each turn.
//!
//! Owns the [`Scenario`] data model, its TOML file format (see `scenarios/*.toml`), the built-in
//! clips (bundled WAVs) and a tiny private RIFF/PCM16 reader. It does not own timing or wire
//! formats: the session core decides *when* a reply is streamed and how it is framed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::SimError;

/// The model's output sample rate (Gemini Live emits 24 kHz s16le mono).
pub const MODEL_RATE: u32 = 24_000;

const GREETING_WAV: &[u8] = include_bytes!("../../../assets/model_greeting.pcm24k.wav");
const LONG_WAV: &[u8] = include_bytes!("../../../assets/model_long.pcm24k.wav");

/// Transcript of the bundled `greeting` clip (assets/PROVENANCE.md).
pub const GREETING_TEXT: &str = "Hi! Thanks for calling. How can I help you today?";
/// Transcript of the bundled `long` clip (assets/PROVENANCE.md).
pub const LONG_TEXT: &str = "Sure. Your order shipped on Monday from our warehouse in Denver, and the tracking page shows it is out for delivery today, before eight in the evening.";

/// A piece of model speech: 24 kHz mono signed 16-bit samples, cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Clip {
    samples: Arc<[i16]>,
}

impl std::fmt::Debug for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clip({} ms)", self.duration_ms())
    }
}

impl Clip {
    /// The bundled greeting clip ("Hi! Thanks for calling…", about 4 s).
    pub fn greeting() -> Clip {
        // The bundled asset is checked by a unit test, so this cannot fail at runtime.
        Clip::from_wav_bytes(GREETING_WAV).unwrap_or_else(|_| Clip::silence(1000))
    }

    /// The bundled long reply clip ("Sure. Your order shipped…", about 8.7 s).
    pub fn long() -> Clip {
        Clip::from_wav_bytes(LONG_WAV).unwrap_or_else(|_| Clip::silence(1000))
    }

    /// Samples at 24 kHz.
    pub fn from_samples(samples: Vec<i16>) -> Clip {
        Clip {
            samples: samples.into(),
        }
    }

    /// Silence of the given length.
    pub fn silence(ms: u32) -> Clip {
        Clip::from_samples(vec![0; (ms as usize) * MODEL_RATE as usize / 1000])
    }

    /// A 24 kHz mono PCM16 WAV file held in memory.
    pub fn from_wav_bytes(bytes: &[u8]) -> Result<Clip, SimError> {
        let (rate, samples) = read_wav_pcm16_mono(bytes)?;
        if rate != MODEL_RATE {
            return Err(SimError::Wav(format!(
                "sample rate {rate} Hz, the model emits {MODEL_RATE} Hz"
            )));
        }
        Ok(Clip::from_samples(samples))
    }

    /// A 24 kHz mono PCM16 WAV file on disk.
    pub fn from_wav_file(path: &Path) -> Result<Clip, SimError> {
        let bytes = std::fs::read(path).map_err(|source| SimError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Clip::from_wav_bytes(&bytes).map_err(|e| SimError::Wav(format!("{}: {e}", path.display())))
    }

    /// The samples (24 kHz mono).
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// Length in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / MODEL_RATE as u64
    }
}

/// What the model says: optional audio and the transcript that goes with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Audio to stream; `None` for a turn that only calls tools.
    pub clip: Option<Clip>,
    /// Transcript split over the audio as `outputTranscription` fragments.
    pub text: String,
}

impl Reply {
    /// The bundled greeting clip with its transcript.
    pub fn greeting() -> Reply {
        Reply {
            clip: Some(Clip::greeting()),
            text: GREETING_TEXT.to_string(),
        }
    }

    /// The bundled long clip with its transcript.
    pub fn long() -> Reply {
        Reply {
            clip: Some(Clip::long()),
            text: LONG_TEXT.to_string(),
        }
    }
}

/// A function call the model makes in a scripted turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Function name (as declared by the client in `setup.tools`).
    pub name: String,
    /// Arguments object.
    pub args: Value,
}

/// How a fault ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Send a close frame with this code and reason (reason truncated to 123 bytes).
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// Drop the TCP connection without a close frame (the client sees 1006).
    Drop,
}

/// A fault attached to one scripted turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnFault {
    /// Delay after the reply starts streaming.
    pub after_ms: u64,
    /// What to do.
    pub action: FaultAction,
}

/// One scripted exchange: the caller says something, the model answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// What the caller is expected to say; sent back as `inputTranscription` fragments.
    pub caller: Option<String>,
    /// The model's answer.
    pub reply: Reply,
    /// Function calls, sent together in one `toolCall`. BLOCKING calls (the declared or the
    /// model's default `behavior`) follow `reply` and the model waits for every response;
    /// when every call is NON_BLOCKING they go out at [`Turn::tool_call_at_ms`] and the reply
    /// keeps streaming.
    pub tool_calls: Vec<ToolCall>,
    /// NON_BLOCKING calls only: ms of `reply` audio streamed before the `toolCall` is sent;
    /// `None` (or past the end of the audio): right after the reply audio.
    pub tool_call_at_ms: Option<u64>,
    /// What the model says once every tool call got its response: in the same turn for
    /// BLOCKING calls; for NON_BLOCKING calls as a new turn, as the response's `scheduling`
    /// says (`SILENT`: never).
    pub after_tool: Option<Reply>,
    /// Optional fault injected while this turn plays.
    pub fault: Option<TurnFault>,
}

impl Turn {
    /// A plain turn answering with `reply`.
    pub fn reply(reply: Reply) -> Turn {
        Turn {
            caller: None,
            reply,
            tool_calls: Vec::new(),
            tool_call_at_ms: None,
            after_tool: None,
            fault: None,
        }
    }
}

/// Connection-level faults (turn faults live on [`Turn`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Faults {
    /// Refuse WebSocket upgrades with this HTTP status (e.g. 429).
    pub reject_upgrade_status: Option<u16>,
    /// How many upgrades to refuse; 0 = all of them.
    pub reject_upgrade_count: u32,
    /// Delay before `setupComplete`.
    pub setup_delay_ms: u64,
    /// Fire right after `setupComplete`.
    pub after_setup: Option<FaultAction>,
    /// Fire when this many user turns have been detected on a connection.
    pub after_user_turns: Option<(u32, FaultAction)>,
    /// Fire this long after the connection opened.
    pub after_ms: Option<(u64, FaultAction)>,
    /// Apply connection and turn faults on every connection, not only the first one
    /// (so a client can reconnect and resume after a fault by default).
    pub all_connections: bool,
}

/// A scripted conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Reply for the first turn of a session when it is triggered by text (`clientContent` or
    /// `realtimeInput.text`), which is how a bridge prompts the model to greet the caller.
    pub greeting: Option<Reply>,
    /// Turns matched in order; when they run out the last one repeats.
    pub turns: Vec<Turn>,
    /// Connection faults.
    pub faults: Faults,
}

impl Default for Scenario {
    /// Greeting, then the long reply, then a goodbye turn (which reuses the greeting clip).
    fn default() -> Scenario {
        Scenario {
            greeting: Some(Reply::greeting()),
            turns: vec![Turn::reply(Reply::long()), Turn::reply(Reply::greeting())],
            faults: Faults::default(),
        }
    }
}

impl Scenario {
    /// Parse a scenario file; relative WAV paths are resolved against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Scenario, SimError> {
        let file: FileScenario =
            toml::from_str(text).map_err(|e| SimError::Scenario(e.to_string()))?;
        file.build(base_dir)
    }

    /// Load a scenario file from disk.
    pub fn load(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Scenario::from_toml_str(&text, &base)
            .map_err(|e| SimError::Scenario(format!("{}: {e}", path.display())))
    }

    /// The turn for script position `index` (repeats the last turn; a long reply if empty).
    pub(crate) fn turn(&self, index: usize) -> Turn {
        match self.turns.get(index).or(self.turns.last()) {
            Some(t) => t.clone(),
            None => Turn::reply(Reply::long()),
        }
    }
}

// ---- TOML file format -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScenario {
    greeting: Option<FileReply>,
    #[serde(default, rename = "turn")]
    turns: Vec<FileTurn>,
    #[serde(default)]
    faults: FileFaults,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReply {
    clip: Option<String>,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTurn {
    caller: Option<String>,
    clip: Option<String>,
    text: Option<String>,
    #[serde(default)]
    tool_calls: Vec<FileToolCall>,
    tool_call_at_ms: Option<u64>,
    after_tool: Option<FileReply>,
    fault: Option<FileFault>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToolCall {
    name: String,
    #[serde(default)]
    args: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFault {
    action: String,
    code: Option<u16>,
    reason: Option<String>,
    after_ms: Option<u64>,
    turns: Option<u32>,
    ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFaults {
    reject_upgrade_status: Option<u16>,
    #[serde(default)]
    reject_upgrade_count: u32,
    #[serde(default)]
    setup_delay_ms: u64,
    after_setup: Option<FileFault>,
    after_user_turns: Option<FileFault>,
    after_ms: Option<FileFault>,
    #[serde(default)]
    all_connections: bool,
}

impl FileScenario {
    fn build(self, base: &Path) -> Result<Scenario, SimError> {
        let greeting = self.greeting.map(|r| r.build(base)).transpose()?;
        let turns = self
            .turns
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.build(base)
                    .map_err(|e| SimError::Scenario(format!("turn {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let f = self.faults;
        let faults = Faults {
            reject_upgrade_status: f.reject_upgrade_status,
            reject_upgrade_count: f.reject_upgrade_count,
            setup_delay_ms: f.setup_delay_ms,
            after_setup: f.after_setup.map(|x| x.action()).transpose()?,
            after_user_turns: f
                .after_user_turns
                .map(|x| {
                    let n = x.turns.ok_or_else(|| {
                        SimError::Scenario("faults.after_user_turns needs `turns`".into())
                    })?;
                    Ok::<_, SimError>((n, x.action()?))
                })
                .transpose()?,
            after_ms: f
                .after_ms
                .map(|x| {
                    let ms = x
                        .ms
                        .ok_or_else(|| SimError::Scenario("faults.after_ms needs `ms`".into()))?;
                    Ok::<_, SimError>((ms, x.action()?))
                })
                .transpose()?,
            all_connections: f.all_connections,
        };
        Ok(Scenario {
            greeting,
            turns,
            faults,
        })
    }
}

impl FileReply {
    fn build(self, base: &Path) -> Result<Reply, SimError> {
        build_reply(self.clip, self.text, base)
    }
}

/// A named built-in clip brings its transcript along unless `text` overrides it.
fn build_reply(clip: Option<String>, text: Option<String>, base: &Path) -> Result<Reply, SimError> {
    let (clip, default_text) = match clip.as_deref() {
        None => (None, ""),
        Some("greeting") => (Some(Clip::greeting()), GREETING_TEXT),
        Some("long") => (Some(Clip::long()), LONG_TEXT),
        Some(path) => {
            let p = PathBuf::from(path);
            let p = if p.is_absolute() { p } else { base.join(p) };
            (Some(Clip::from_wav_file(&p)?), "")
        }
    };
    Ok(Reply {
        clip,
        text: text.unwrap_or_else(|| default_text.to_string()),
    })
}

impl FileTurn {
    fn build(self, base: &Path) -> Result<Turn, SimError> {
        let reply = build_reply(self.clip, self.text, base)?;
        let tool_calls = self
            .tool_calls
            .into_iter()
            .map(|c| {
                let args = match c.args {
                    None => Value::Object(Default::default()),
                    Some(v) => serde_json::to_value(v)
                        .map_err(|e| SimError::Scenario(format!("tool call {}: {e}", c.name)))?,
                };
                if !args.is_object() {
                    return Err(SimError::Scenario(format!(
                        "tool call {}: args must be a table, got {args}",
                        c.name
                    )));
                }
                Ok(ToolCall { name: c.name, args })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fault = self
            .fault
            .map(|f| {
                Ok::<_, SimError>(TurnFault {
                    after_ms: f.after_ms.unwrap_or(0),
                    action: f.action()?,
                })
            })
            .transpose()?;
        Ok(Turn {
            caller: self.caller,
            reply,
            tool_calls,
            tool_call_at_ms: self.tool_call_at_ms,
            after_tool: self.after_tool.map(|r| r.build(base)).transpose()?,
            fault,
        })
    }
}

impl FileFault {
    fn action(&self) -> Result<FaultAction, SimError> {
        match self.action.as_str() {
            "drop" => Ok(FaultAction::Drop),
            "close" => Ok(FaultAction::Close {
                code: self.code.unwrap_or(1011),
                reason: self
                    .reason
                    .clone()
                    .unwrap_or_else(|| "Internal error encountered.".to_string()),
            }),
            other => Err(SimError::Scenario(format!(
                "fault action {other:?}: expected \"close\" or \"drop\""
            ))),
        }
    }
}

// ---- WAV ----------------------------------------------------------------------------------

/// Read a RIFF/WAVE file holding 16-bit PCM mono; returns (sample rate, samples).
pub(crate) fn read_wav_pcm16_mono(bytes: &[u8]) -> Result<(u32, Vec<i16>), SimError> {
    let bad = |what: &str| SimError::Wav(what.to_string());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let mut pos = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body_start = pos + 8;
        let body_end = body_start.saturating_add(len).min(bytes.len());
        let body = &bytes[body_start..body_end];
        if id == b"fmt " {
            if body.len() < 16 {
                return Err(bad("fmt chunk shorter than 16 bytes"));
            }
            let le16 = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            fmt = Some((le16(0), le16(2), rate, le16(14)));
        } else if id == b"data" {
            let (format, channels, rate, bits) = fmt.ok_or_else(|| bad("data before fmt chunk"))?;
            if format != 1 || bits != 16 || channels != 1 {
                return Err(SimError::Wav(format!(
                    "format tag {format}, {channels} channels, {bits} bits; need PCM 16-bit mono"
                )));
            }
            let samples = body
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            return Ok((rate, samples));
        }
        // Chunks are padded to an even length.
        pos = body_start.saturating_add(len + (len & 1));
    }
    Err(bad("no data chunk"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_clips_decode() {
        assert!(read_wav_pcm16_mono(GREETING_WAV).is_ok());
        assert!(read_wav_pcm16_mono(LONG_WAV).is_ok());
        let g = Clip::greeting();
        assert!((3000..6000).contains(&g.duration_ms()), "{g:?}");
        let l = Clip::long();
        assert!(l.duration_ms() > g.duration_ms());
        assert!(g.samples().iter().any(|&s| s.abs() > 1000));
    }

    #[test]
    fn rejects_wrong_rate_and_garbage() {
        let wav16k = include_bytes!("../../../assets/caller_hello.ref16k.wav");
        assert!(
            matches!(Clip::from_wav_bytes(wav16k), Err(SimError::Wav(m)) if m.contains("16000"))
        );
        assert!(Clip::from_wav_bytes(b"RIFF").is_err());
        let mulaw = include_bytes!("../../../assets/caller_hello.mulaw8k.wav");
        assert!(Clip::from_wav_bytes(mulaw).is_err());
    }

    #[test]
    fn toml_scenario_parses() {
        let text = r#"
            [greeting]
            clip = "greeting"

            [[turn]]
            caller = "I want billing"
            clip = "long"
            text = "Let me transfer you."
            tool_call_at_ms = 300
            [[turn.tool_calls]]
            name = "transfer_call"
            args = { department = "billing" }
            [turn.after_tool]
            clip = "greeting"
            [turn.fault]
            action = "close"
            code = 1011
            after_ms = 200

            [faults]
            setup_delay_ms = 5
            reject_upgrade_status = 429
            reject_upgrade_count = 1
            [faults.after_user_turns]
            turns = 2
            action = "drop"
        "#;
        let s = Scenario::from_toml_str(text, Path::new(".")).expect("parses");
        assert_eq!(
            s.greeting.as_ref().map(|g| g.text.as_str()),
            Some(GREETING_TEXT)
        );
        let t = &s.turns[0];
        assert_eq!(t.reply.text, "Let me transfer you.");
        assert_eq!(t.tool_call_at_ms, Some(300));
        assert_eq!(
            t.tool_calls[0].args,
            serde_json::json!({"department": "billing"})
        );
        assert_eq!(
            t.after_tool.as_ref().map(|r| r.text.as_str()),
            Some(GREETING_TEXT)
        );
        assert_eq!(
            t.fault,
            Some(TurnFault {
                after_ms: 200,
                action: FaultAction::Close {
                    code: 1011,
                    reason: "Internal error encountered.".into()
                }
            })
        );
        assert_eq!(s.faults.after_user_turns, Some((2, FaultAction::Drop)));
        assert_eq!(s.turn(5), s.turns[0]);
        assert!(Scenario::from_toml_str("bogus = 1", Path::new(".")).is_err());
        assert!(Scenario::from_toml_str(
            "[[turn]]\nclip = \"nope.wav\"",
            Path::new("/nonexistent")
        )
        .is_err());
    }

    #[test]
    fn example_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("scenarios dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n > 0);
    }
}
