//! SHIM
pub struct StreamTwiml<'a> { pub stream_url: &'a str, pub parameters: &'a [(String, String)], pub status_callback: Option<&'a str>, pub fallback: Option<&'a str> }
pub fn connect_stream_twiml(_t: &StreamTwiml<'_>) -> String { todo!() }
pub fn xml_escape(_s: &str) -> String { todo!() }
pub fn validate_fallback_fragment(_s: &str) -> Result<(), String> { todo!() }
pub fn parse_form(_body: &str) -> Result<Vec<(String, String)>, super::wire::WireError> { todo!() }
