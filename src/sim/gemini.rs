//! SHIM
#[derive(clap::Args)]
pub struct SimulateArgs {}
pub async fn run_cli(_a: SimulateArgs) -> Result<(), String> { todo!() }
