//! SHIM
#[derive(Debug, Clone)]
pub enum ModelEvent { SetupComplete, Audio(Vec<u8>), Text(String), InputTranscription(String), OutputTranscription(String), Interrupted, GenerationComplete, TurnComplete, Usage(UsageMetadata), ToolCall(Vec<FunctionCall>), ToolCallCancellation(Vec<String>), GoAway { time_left: Option<std::time::Duration> }, SessionResumptionUpdate { new_handle: Option<String>, resumable: bool }, Unknown(String) }
#[derive(Debug, Clone)]
pub struct FunctionCall { pub id: String, pub name: String, pub args: serde_json::Value }
#[derive(Debug, Clone, Default)]
pub struct UsageMetadata { pub prompt_token_count: u64, pub response_token_count: u64, pub total_token_count: u64, pub prompt_details: Vec<(String, u64)>, pub response_details: Vec<(String, u64)> }
pub fn decompose(_frame: &[u8]) -> Result<Vec<ModelEvent>, WireError> { todo!() }
#[derive(Debug, thiserror::Error)] pub enum WireError { #[error("x")] X }
pub enum ModelCommand<'a> { Audio(&'a [u8]), AudioStreamEnd, Text(&'a str), ClientContent { turns: &'a [Turn], turn_complete: bool }, ToolResponse(&'a [FunctionResponse]) }
#[derive(Debug, Clone)]
pub struct Turn { pub role: Role, pub text: String }
#[derive(Debug, Clone, Copy)]
pub enum Role { User, Model }
#[derive(Debug, Clone)]
pub struct FunctionResponse { pub id: String, pub name: String, pub response: serde_json::Value }
pub fn to_json(_cmd: &ModelCommand<'_>) -> String { todo!() }
