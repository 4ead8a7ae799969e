//! The read-only SQL of `/v1/sql` over the Postgres wire protocol (`serving.pg_listen`), for
//! `psql`, Postgres drivers and the BI tools that speak it (Grafana, Superset, Metabase,
//! DBeaver).
//!
//! The protocol is pgwire's, through `datafusion-postgres`: its parser (which rewrites the
//! Postgres-only syntax of catalogue queries), its `SET`/`SHOW`/transaction hooks and its
//! Arrow-to-Postgres encoding. Every statement that reaches data goes through the same path
//! as `/v1/sql` ([`crate::sql::prepare`]): a session of its own with the tables it names, the
//! read-only guard, the rollup check, the time, row and memory limits, and one of the
//! `serving.sql_max_concurrent` slots it shares with the HTTP API. The session also holds
//! `pg_catalog` ([`PgSessions`]), which is what `psql`'s `\d` and `\dt` read.
//!
//! With auth on, the password is a token (the user name is not looked at): a token with the
//! `query` scope reads the views, `admin` also the raw and quarantine tables. The password
//! crosses the connection as the client sends it, so with `serving.tls_cert` set the server
//! speaks TLS only (`sslmode=require`), with the same certificate as the API, as the API
//! speaks HTTPS only.

mod handlers;
mod sessions;
mod startup;

use std::sync::Arc;
use std::time::Duration;

use datafusion_postgres::pgwire::tokio::process_socket;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::AppState;

use handlers::Handlers;
pub use handlers::MAX_STATEMENTS;
pub use sessions::PgSessions;

/// Connections served at once, as Postgres's own default `max_connections`; one more is
/// closed as it arrives.
pub const MAX_CONNECTIONS: usize = 100;

/// A Postgres listener's handlers and TLS, ready before it listens.
pub struct Server {
    handlers: Arc<Handlers>,
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Serves from `state`, over TLS only when `tls` is given.
    pub fn new(state: AppState, tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<Self> {
        let tls = tls.map(|config| {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"postgresql".to_vec()];
            TlsAcceptor::from(Arc::new(config))
        });
        Ok(Self {
            handlers: Arc::new(Handlers::new(state, tls.is_some())?),
            tls,
        })
    }

    /// Serves Postgres clients on `listener` until `shutdown` is cancelled, then ends the
    /// connections still open.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let connections = TaskTracker::new();
        loop {
            let (socket, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, say: wait for connections to end rather
                        // than spin.
                        tracing::warn!(%error, "Postgres listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "Postgres connection refused: {MAX_CONNECTIONS} are open");
                continue;
            };
            let (handlers, tls, shutdown) =
                (self.handlers.clone(), self.tls.clone(), shutdown.clone());
            connections.spawn(async move {
                let _slot = slot;
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    served = process_socket(socket, tls, handlers) => if let Err(error) = served {
                        tracing::debug!(%peer, %error, "Postgres connection ended with an error");
                    },
                }
            });
        }
        connections.close();
        connections.wait().await;
    }
}
