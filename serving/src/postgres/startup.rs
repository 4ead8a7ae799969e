//! The connection's start: TLS when the server has a certificate, a token as the password
//! when auth is on, none asked otherwise.
//! The caller it identifies is kept in the connection's session extensions, which no
//! startup parameter a client sends can write.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use datafusion_postgres::pgwire::api::{METADATA_USER, PgWireConnectionState};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::Authentication;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use futures::{Sink, SinkExt};

use crate::http::guard::{Caller, Guard};

/// Asks for a token as the password when the API needs one, and for TLS when the server has
/// a certificate.
pub struct TokenStartup {
    guard: Arc<Guard>,
    tls: bool,
    parameters: DefaultServerParameterProvider,
}

impl TokenStartup {
    /// Startup checked by `guard`, refusing connections without TLS when `tls`.
    pub fn new(guard: Arc<Guard>, tls: bool) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        parameters.server_version = format!("16.6 (lambdaflow {})", env!("CARGO_PKG_VERSION"));
        Self {
            guard,
            tls,
            parameters,
        }
    }

    async fn admit<C>(&self, client: &mut C, caller: Caller) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        client.session_extensions().insert(caller);
        finish_authentication(client, &self.parameters).await
    }
}

#[async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                if self.tls && !client.is_secure() {
                    return hang_up(
                        client,
                        refusal(
                            "08P01",
                            "this server speaks TLS only: connect with sslmode=require".into(),
                        ),
                    )
                    .await;
                }
                if let Err(error) = protocol_negotiation(client, &startup).await {
                    return hang_up(client, error).await;
                }
                save_startup_parameters_to_metadata(client, &startup);
                if self.guard.needs_token() {
                    client.set_state(PgWireConnectionState::AuthenticationInProgress);
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                } else {
                    match self.guard.identify("") {
                        Ok(caller) => self.admit(client, caller).await?,
                        Err(e) => return hang_up(client, refusal("28000", e.to_string())).await,
                    }
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = match password.into_password() {
                    Ok(password) => password,
                    Err(error) => return hang_up(client, error).await,
                };
                let user = client.metadata().get(METADATA_USER).cloned();
                match self.guard.identify(password.password.trim()) {
                    Ok(caller) => self.admit(client, caller).await?,
                    Err(_) => {
                        tracing::info!(user = ?user, peer = %client.socket_addr(), "Postgres login refused: unknown token");
                        return hang_up(
                            client,
                            PgWireError::InvalidPassword(user.unwrap_or_default()),
                        )
                        .await;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Sends `error` and closes the connection: pgwire would otherwise go on reading the
/// messages of a client it refused.
async fn hang_up<C>(client: &mut C, error: PgWireError) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let info = ErrorInfo::from(error);
    let message = info.message.clone();
    client
        .send(PgWireBackendMessage::ErrorResponse(info.into()))
        .await?;
    client.close().await?;
    Err(PgWireError::IoError(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        message,
    )))
}

fn refusal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        code.to_owned(),
        message,
    )))
}
