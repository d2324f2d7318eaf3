//! The sans-IO call machine ([`callbridge::call::machine::Call`]) driven faster than real
//! time, split by concern. These pin the BLOCKING tool semantics (Gemini 2.5); the
//! NON_BLOCKING ones (3.8, the default) are in tests/model_profiles.rs.

mod control;
mod playout;
mod session;
mod support;
mod timers;
mod tools;
