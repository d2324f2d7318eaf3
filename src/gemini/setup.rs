//! SHIM
#[derive(Debug, Clone, Default)]
pub struct SetupParams { pub model: String, pub voice: Option<String>, pub language: Option<String>, pub system_instruction: Option<String>, pub tools: Vec<FunctionDeclaration>, pub input_transcription: bool, pub output_transcription: bool, pub session_resumption: bool, pub resume_handle: Option<String>, pub vad: ActivityDetection, pub context_compression: Option<ContextCompression> }
#[derive(Debug, Clone, Default)]
pub struct FunctionDeclaration { pub name: String, pub description: String, pub parameters: Option<serde_json::Value>, pub behavior: Option<String> }
#[derive(Debug, Clone, Default)]
pub struct ActivityDetection { pub disabled: bool, pub start_sensitivity: Option<String>, pub end_sensitivity: Option<String>, pub prefix_padding_ms: Option<u32>, pub silence_duration_ms: Option<u32>, pub activity_handling: Option<String> }
#[derive(Debug, Clone, Default)]
pub struct ContextCompression { pub trigger_tokens: Option<u64>, pub target_tokens: Option<u64> }
pub fn setup_message(_p: &SetupParams) -> String { todo!() }
