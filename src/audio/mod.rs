//! Audio stages: G.711 μ-law, resampling, and the two per-call transcoders.
//!
//! Owns sample formats and rates; knows nothing about JSON, base64 or sockets.
//! [`transcode::Uplink`] and [`transcode::Downlink`] are the entry points the call driver
//! uses; [`wav`] is for fixtures, captures and tools.

pub mod g711;
pub mod resample;
pub mod transcode;
pub mod wav;

pub use transcode::{AudioError, Downlink, Uplink};
