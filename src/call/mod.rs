//! One phone call: the sans-IO state machine and the async driver around it.

pub mod admission;
pub mod control;
pub mod driver;
pub mod machine;
pub mod prompts;
pub mod webhook_tools;
