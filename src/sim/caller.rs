//! SHIM
#[derive(clap::Args)]
pub struct CallArgs {}
pub async fn run_cli(_a: CallArgs) -> Result<(), String> { todo!() }
