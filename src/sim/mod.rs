//! Simulated peers, shipped as product features: the demo, the tests and developers use them.
//!
//! They deliberately do not reuse the bridge's wire types: they read and write JSON as the
//! specs describe it (over `serde_json::Value`), so a codec bug cannot hide by agreeing with
//! itself.

pub mod caller;
pub mod gemini;
pub mod operator;
pub mod twilio_rest;
