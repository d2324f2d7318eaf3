//! SHIM
#[derive(Debug, thiserror::Error)] pub enum AudioError { #[error("x")] X }
pub struct Uplink;
impl Uplink { pub fn new() -> Result<Uplink, AudioError> { todo!() } pub fn process(&mut self, _u: &[u8], _out: &mut Vec<u8>) {} pub fn delay(&self) -> std::time::Duration { todo!() } pub fn reset(&mut self) {} }
pub struct Downlink;
impl Downlink { pub fn new() -> Result<Downlink, AudioError> { todo!() } pub fn process(&mut self, _p: &[u8], _out: &mut Vec<u8>) {} pub fn finish(&mut self, _out: &mut Vec<u8>) {} pub fn reset(&mut self) {} pub fn delay(&self) -> std::time::Duration { todo!() } }
