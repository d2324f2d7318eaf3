//! The caller leg: Twilio Media Streams messages and the voice webhook's TwiML.

pub mod rest;
pub mod signature;
pub mod webhook;
pub mod wire;
