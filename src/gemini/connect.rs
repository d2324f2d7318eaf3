//! SHIM
pub enum Credential { ApiKey(String), EphemeralToken(String) }
pub type ModelSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
#[derive(Debug, thiserror::Error)] pub enum ConnectError { #[error("x")] X }
pub async fn connect(_url: &str, _credential: &Credential, _timeout: std::time::Duration) -> Result<ModelSocket, ConnectError> { todo!() }
