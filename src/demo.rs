//! SHIM
#[derive(clap::Args)]
pub struct DemoArgs {}
pub async fn run(_a: DemoArgs) -> Result<(), String> { todo!() }
