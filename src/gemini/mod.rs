//! The model leg: Gemini Live (BidiGenerateContent) messages, the setup message, and the
//! WebSocket connection.

pub mod auth;
pub mod connect;
pub mod preflight;
pub mod profile;
pub mod setup;
pub mod tls;
pub mod wire;
