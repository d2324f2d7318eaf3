//! callbridge — puts the Gemini Live voice model on the phone.
//!
//! A telephony provider (Twilio) streams a call to us as 8 kHz μ-law over a WebSocket; we
//! transcode it to 16 kHz PCM for the Gemini Live WebSocket API, transcode the model's 24 kHz
//! speech back to μ-law for the caller, and turn the model's tool calls into call control.
//!
//! Read this first, in this order:
//! 1. [`call::machine`] — the sans-IO per-call state machine: every decision lives here.
//! 2. [`call::driver`] — the only per-call async code: moves bytes, time and cancellation.
//! 3. [`twilio::wire`] and [`gemini::wire`] — the two peers' JSON, parsed into typed events.
//! 4. [`audio::transcode`] — the uplink and downlink audio pipelines.
//! 5. [`server`] — the HTTP surface (`/twilio/voice`, `/twilio/media`, `/healthz`), with
//!    [`ops::api`] (the operator API, dashboard and browser phone) merged in.
//! 6. [`sim`] — the built-in Gemini simulator and simulated Twilio caller (demo and tests).
//!
//! Dependencies point down: `call` uses `gemini`, `twilio` and `audio`, never the reverse.

pub mod audio;
pub mod call;
pub mod config;
pub mod demo;
pub mod gemini;
mod json_fast;
pub mod loadtest;
pub mod ops;
pub mod redact;
pub mod run;
pub mod secret;
pub mod server;
pub mod sim;
pub mod stats;
pub mod twilio;
