//! SHIM (replaced by the twilio helper's module at merge)
use std::collections::BTreeMap;
#[derive(Debug, Clone)]
pub enum CallerEvent { Connected { protocol: String, version: String }, Start(StreamStart), Media(MediaFrame), Dtmf { digit: char }, Mark { name: String }, Stop }
#[derive(Debug, Clone)]
pub struct StreamStart { pub stream_sid: String, pub call_sid: String, pub account_sid: String, pub tracks: Vec<String>, pub encoding: String, pub sample_rate: u32, pub channels: u32, pub custom_parameters: BTreeMap<String, String> }
#[derive(Debug, Clone)]
pub struct MediaFrame { pub chunk: u64, pub timestamp_ms: u64, pub track: String, pub payload: Vec<u8> }
#[derive(Debug, thiserror::Error)] pub enum WireError { #[error("x")] X }
pub fn parse(_text: &str) -> Result<CallerEvent, WireError> { todo!() }
pub enum CallerCommand<'a> { Media(&'a [u8]), Mark(&'a str), Clear }
pub fn to_json(_cmd: &CallerCommand<'_>, _stream_sid: &str) -> String { todo!() }
