//! What differs between Gemini Live models, as data: one table, one row per model family.
//!
//! Owns: which `setup` fields each model allows, requires or refuses (thinking, affective
//! dialog, proactivity, tool `behavior`, `turnCoverage`), how its server events are shaped,
//! its default tool behaviour, how the bridge gives it context without making it stall, and
//! its prices. The setup builder (`call::settings`), config validation and the call machine ask
//! a [`ModelProfile`]; nothing else in the crate looks at a model id.
//!
//! Does not own: the wire encoding (`setup.rs`, `wire.rs`) or what the bridge does with the
//! answers (that is `call`). The simulator keeps its own, independent table
//! (`sim::gemini::proto`), so a mistake here cannot hide by agreeing with itself.
//!
//! Sources (checked 2026-12-02 with the search tool; see `../shared/specs/gemini-live.md` §12):
//! - ai.google.dev/gemini-api/docs/models/gemini-3.8-live (migration notes: no thinking config,
//!   NON_BLOCKING default with SILENT / WHEN_IDLE / INTERRUPT scheduling, whole-session
//!   `clientContent` that "waits for subsequent messages" without `turnComplete`, proactive audio
//!   always on — `false` is an error, affective dialog removed, turn coverage default
//!   TURN_INCLUDES_AUDIO_ACTIVITY_AND_ALL_VIDEO, AUDIO response modality only).
//! - ai.google.dev/gemini-api/docs/models/gemini-3.8-live-extended-thinking (function calling
//!   "supported (async only)", background reasoning).
//! - Vertex "Migrate from Gemini 2.5 Flash Live API native audio to Gemini 3.8 Live" (BLOCKING
//!   still declarable on 3.8; new input cancels a running blocking call; INTERRUPT waits for the
//!   user to finish on 3.8).
//! - ai.google.dev/gemini-api/docs/models/gemini-3.1-flash-live-preview via the spec §5.2/§12:
//!   `thinkingLevel` (default minimal), synchronous tools only, no proactive/affective.
//! - ai.google.dev/gemini-api/docs/deprecations (3.8 ids released 2026-09-15, no shutdown date).
//! - Prices: 2.5 native audio $0.50 text in / $3.00 audio in / $2.00 text out / $12.00 audio out
//!   per 1M tokens (Google's pricing page as quoted by rywalker.com/research/gemini-live-api);
//!   3.1 and 3.8 Live: $0.75 in / $4.50 out per 1M tokens (AI gateways' listings: vercel.com
//!   ai-gateway gemini-3.8-live, console.core.today gemini-3.1-flash-live-preview) and
//!   ~$0.005/min audio in, ~$0.018/min audio out for 3.1 (≈ $3 / $12 per 1M audio tokens at 25
//!   tokens/s). Not verified against Google's own pricing page (not in the stored corpus):
//!   override them in `[pricing]`.

/// Which Google API serves the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The Gemini Developer API (generativelanguage.googleapis.com, API key).
    GeminiApi,
    /// Vertex AI (`{location}-aiplatform.googleapis.com`, OAuth2 bearer token).
    Vertex,
}

/// Where a model is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Generally available.
    Stable,
    /// A preview: may be shut down at short notice.
    Preview,
    /// A preview with a stable successor; expect it to be retired.
    Legacy,
}

impl Status {
    /// Stable label for logs and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Stable => "stable",
            Status::Preview => "preview",
            Status::Legacy => "legacy preview",
        }
    }
}

/// What `generationConfig.thinkingConfig` the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkingRule {
    /// Refused: the field must be omitted (3.8).
    Forbidden,
    /// `thinkingBudget` (tokens; 0 turns thinking off, absent = dynamic) — 2.5.
    Budget,
    /// `thinkingLevel` (MINIMAL … HIGH), optional — 3.1.
    Level,
    /// `thinkingLevel` is required — 3.8 extended thinking.
    LevelRequired,
}

/// `proactivity.proactiveAudio`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProactivityRule {
    /// Not supported: omit `proactivity`.
    Forbidden,
    /// Off unless asked for.
    Optional,
    /// Always on; sending `false` is an error, so the field is omitted.
    AlwaysOn,
}

/// `FunctionDeclaration.behavior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolBehavior {
    /// The model waits for the response before it goes on (no `scheduling`).
    Blocking,
    /// The model keeps talking; each response carries a `scheduling`.
    NonBlocking,
}

impl ToolBehavior {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolBehavior::Blocking => "BLOCKING",
            ToolBehavior::NonBlocking => "NON_BLOCKING",
        }
    }
}

/// Which tool behaviours a model accepts in `setup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolModes {
    /// Synchronous tools only (3.1).
    BlockingOnly,
    /// Asynchronous tools only (3.8 extended thinking).
    NonBlockingOnly,
    /// Both may be declared (2.5, 3.8).
    Both,
}

/// How the bridge gives the model context it must not answer at once (what the caller heard
/// after a barge-in, a tool result from an earlier session, a fresh session's history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteForm {
    /// `clientContent` with `turnComplete: false`: appended to the history; the model answers
    /// the next input as usual (documented for 3.1 / 3.8).
    IncompleteClientContent,
    /// `realtimeInput.text`: joins the caller's current input. Used where `clientContent`
    /// without `turnComplete` was reported to stop the model from answering later audio (2.5).
    RealtimeText,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    /// Prompt TEXT tokens.
    pub input_text: f64,
    /// Prompt AUDIO tokens.
    pub input_audio: f64,
    /// Response TEXT tokens (thinking tokens are billed as output text).
    pub output_text: f64,
    /// Response AUDIO tokens.
    pub output_audio: f64,
}

/// One model family's behaviour. See the module docs.
#[derive(Debug, PartialEq)]
pub struct ModelProfile {
    /// The profile's name (`gemini.profile` pins it): the family's main model id.
    pub name: &'static str,
    /// Model ids this profile serves (without `models/`).
    pub ids: &'static [&'static str],
    /// Which API serves it.
    pub backend: Backend,
    /// Life-cycle stage.
    pub status: Status,
    /// `thinkingConfig`.
    pub thinking: ThinkingRule,
    /// `generationConfig.enableAffectiveDialog` is accepted.
    pub affective_dialog: bool,
    /// `proactivity`.
    pub proactivity: ProactivityRule,
    /// Behaviour of a function declared without `behavior`.
    pub default_tool_behavior: ToolBehavior,
    /// Behaviours that may be declared.
    pub tool_modes: ToolModes,
    /// `realtimeInputConfig.turnCoverage` is accepted.
    pub turn_coverage: bool,
    /// One server event may carry audio, transcription and more together.
    pub multi_part_events: bool,
    /// Reports `interactionStatus` / `waitingForInput` (background reasoning): `turnComplete`
    /// alone does not mean the model is idle.
    pub interaction_status: bool,
    /// How context notes are sent.
    pub notes: NoteForm,
    /// Default prices for cost estimates.
    pub prices: Prices,
}

impl ModelProfile {
    /// The behaviour the bridge declares for a tool the model should not wait on (call control,
    /// and webhook tools not configured as blocking): NON_BLOCKING where the model's default is
    /// NON_BLOCKING, else BLOCKING — so on BLOCKING-default models nothing changes.
    pub fn async_tool_behavior(&self) -> ToolBehavior {
        match (self.default_tool_behavior, self.tool_modes) {
            (_, ToolModes::NonBlockingOnly) => ToolBehavior::NonBlocking,
            (ToolBehavior::NonBlocking, _) => ToolBehavior::NonBlocking,
            _ => ToolBehavior::Blocking,
        }
    }

    /// Whether `behavior` may be declared.
    pub fn allows(&self, behavior: ToolBehavior) -> bool {
        !matches!(
            (self.tool_modes, behavior),
            (ToolModes::BlockingOnly, ToolBehavior::NonBlocking)
                | (ToolModes::NonBlockingOnly, ToolBehavior::Blocking)
        )
    }
}

const PRICES_3X: Prices = Prices {
    input_text: 0.75,
    input_audio: 3.00,
    output_text: 4.50,
    output_audio: 12.00,
};

const PRICES_25: Prices = Prices {
    input_text: 0.50,
    input_audio: 3.00,
    output_text: 2.00,
    output_audio: 12.00,
};

/// The table. The first row is the default model's.
pub const PROFILES: &[ModelProfile] = &[
    ModelProfile {
        name: "gemini-3.8-live",
        ids: &["gemini-3.8-live"],
        backend: Backend::GeminiApi,
        status: Status::Stable,
        thinking: ThinkingRule::Forbidden,
        affective_dialog: false,
        proactivity: ProactivityRule::AlwaysOn,
        default_tool_behavior: ToolBehavior::NonBlocking,
        tool_modes: ToolModes::Both,
        turn_coverage: true,
        multi_part_events: true,
        interaction_status: false,
        notes: NoteForm::IncompleteClientContent,
        prices: PRICES_3X,
    },
    ModelProfile {
        name: "gemini-3.8-live-extended-thinking",
        ids: &["gemini-3.8-live-extended-thinking"],
        backend: Backend::GeminiApi,
        status: Status::Stable,
        thinking: ThinkingRule::LevelRequired,
        affective_dialog: false,
        proactivity: ProactivityRule::AlwaysOn,
        default_tool_behavior: ToolBehavior::NonBlocking,
        tool_modes: ToolModes::NonBlockingOnly,
        turn_coverage: true,
        multi_part_events: true,
        interaction_status: true,
        notes: NoteForm::IncompleteClientContent,
        prices: PRICES_3X,
    },
    ModelProfile {
        name: "gemini-3.1-flash-live-preview",
        ids: &["gemini-3.1-flash-live-preview"],
        backend: Backend::GeminiApi,
        status: Status::Legacy,
        thinking: ThinkingRule::Level,
        affective_dialog: false,
        proactivity: ProactivityRule::Forbidden,
        default_tool_behavior: ToolBehavior::Blocking,
        tool_modes: ToolModes::BlockingOnly,
        turn_coverage: true,
        multi_part_events: true,
        interaction_status: false,
        notes: NoteForm::IncompleteClientContent,
        prices: PRICES_3X,
    },
    ModelProfile {
        name: "gemini-2.5-flash-native-audio",
        ids: &[
            "gemini-2.5-flash-native-audio-preview-12-2025",
            "gemini-2.5-flash-native-audio-latest",
            "gemini-2.5-flash-native-audio-preview-09-2025",
        ],
        backend: Backend::GeminiApi,
        status: Status::Preview,
        thinking: ThinkingRule::Budget,
        affective_dialog: true,
        proactivity: ProactivityRule::Optional,
        default_tool_behavior: ToolBehavior::Blocking,
        tool_modes: ToolModes::Both,
        turn_coverage: true,
        multi_part_events: false,
        interaction_status: false,
        notes: NoteForm::RealtimeText,
        prices: PRICES_25,
    },
    ModelProfile {
        name: "gemini-live-2.5-flash-native-audio",
        ids: &["gemini-live-2.5-flash-native-audio"],
        backend: Backend::Vertex,
        status: Status::Stable,
        thinking: ThinkingRule::Budget,
        affective_dialog: true,
        proactivity: ProactivityRule::Optional,
        default_tool_behavior: ToolBehavior::Blocking,
        tool_modes: ToolModes::Both,
        turn_coverage: true,
        multi_part_events: false,
        interaction_status: false,
        notes: NoteForm::RealtimeText,
        prices: PRICES_25,
    },
];

/// The default model id (`gemini.model`).
pub const DEFAULT_MODEL: &str = "gemini-3.8-live";

/// How a model id was matched to a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The id is in the table.
    Known,
    /// `gemini.profile` named the profile.
    Pinned,
    /// Unknown id, no pin: the default profile, with a warning at start-up.
    Fallback,
}

/// The bare model id: without `models/`, and the last segment of a Vertex resource path
/// (`projects/p/locations/l/publishers/google/models/m`).
pub fn bare_id(model: &str) -> &str {
    match model.rfind("models/") {
        Some(i) => &model[i + "models/".len()..],
        None => model,
    }
}

/// The profile named `name` (a profile name or any id it serves).
pub fn by_name(name: &str) -> Option<&'static ModelProfile> {
    let id = bare_id(name);
    PROFILES
        .iter()
        .find(|p| p.name == id || p.ids.contains(&id))
}

/// The profile for `model`: `pin` (a profile name) wins; else the table; else the default.
pub fn resolve(model: &str, pin: Option<&str>) -> (&'static ModelProfile, Match) {
    if let Some(p) = pin.and_then(by_name) {
        return (p, Match::Pinned);
    }
    match by_name(model) {
        Some(p) => (p, Match::Known),
        None => (&PROFILES[0], Match::Fallback),
    }
}

/// Names of every profile, for error messages and docs.
pub fn names() -> Vec<&'static str> {
    PROFILES.iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_resolves_to_one_profile_and_the_default_is_first() {
        let mut seen = std::collections::HashSet::new();
        for p in PROFILES {
            for id in p.ids {
                assert!(seen.insert(*id), "{id} listed twice");
                assert_eq!(resolve(id, None), (p, Match::Known));
                assert_eq!(resolve(&format!("models/{id}"), None).0, p);
            }
        }
        assert_eq!(resolve(DEFAULT_MODEL, None).0.name, DEFAULT_MODEL);
    }

    #[test]
    fn vertex_paths_unknown_ids_and_pins() {
        let path = "projects/p1/locations/us-central1/publishers/google/models/gemini-live-2.5-flash-native-audio";
        assert_eq!(resolve(path, None).0.backend, Backend::Vertex);
        assert_eq!(
            resolve("gemini-9-live", None),
            (&PROFILES[0], Match::Fallback)
        );
        let (p, m) = resolve("gemini-9-live", Some("gemini-2.5-flash-native-audio"));
        assert_eq!((p.thinking, m), (ThinkingRule::Budget, Match::Pinned));
    }

    #[test]
    fn tool_behaviour_follows_the_model() {
        let b = |n: &str| by_name(n).map(|p| p.async_tool_behavior());
        assert_eq!(b("gemini-3.8-live"), Some(ToolBehavior::NonBlocking));
        assert_eq!(
            b("gemini-3.8-live-extended-thinking"),
            Some(ToolBehavior::NonBlocking)
        );
        assert_eq!(
            b("gemini-3.1-flash-live-preview"),
            Some(ToolBehavior::Blocking)
        );
        assert_eq!(
            b("gemini-2.5-flash-native-audio-latest"),
            Some(ToolBehavior::Blocking)
        );
        let ext = by_name("gemini-3.8-live-extended-thinking").unwrap();
        assert!(!ext.allows(ToolBehavior::Blocking));
        let p31 = by_name("gemini-3.1-flash-live-preview").unwrap();
        assert!(!p31.allows(ToolBehavior::NonBlocking));
    }
}
