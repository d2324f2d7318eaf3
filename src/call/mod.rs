//! One phone call: the sans-IO state machine and the async driver around it.

pub mod admission;
pub mod control;
pub mod driver;
pub mod event;
pub mod inbound;
pub mod machine;
pub mod playout;
pub mod prompts;
pub mod settings;
pub mod webhook_tools;
