//! Audio stages: G.711 μ-law, resampling, and the two per-call transcoders.
//!
//! Owns sample formats and rates; knows nothing about JSON, base64 or sockets.

pub mod g711;
pub mod resample;
pub mod transcode;
pub mod wav;
