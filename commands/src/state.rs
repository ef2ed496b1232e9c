//! What every handler shares: the app state, built once in `main`, and how it verifies tokens.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::HeaderMap;
use platform::auth::TokenVerifier;
use redis::aio::ConnectionManager;

use crate::config::Config;
use crate::identity::passwords::Passwords;
use crate::identity::store::IdentityStore;
use crate::identity::throttle::Throttle;
use crate::identity::tokens::Signer;
use crate::limits::Limits;
use crate::writer::Writer;

pub struct App {
    pub config: Config,
    pub store: IdentityStore,
    pub passwords: Passwords,
    pub signer: Signer,
    pub verifier: TokenVerifier,
    pub throttle: Throttle,
    pub redis: ConnectionManager,
    pub writer: Writer,
    pub limits: Limits,
    pub http: reqwest::Client,
    pub files: crate::files::FileStore,
    /// Admits other tiers' internal requests (`None`: no secret file, so none is admitted).
    pub internal: Option<platform::internal::InternalSecret>,
}

pub type AppState = Arc<App>;

impl App {
    /// The client address for login throttling: the peer, or the first `X-Forwarded-For` hop
    /// when the peer is the local proxy (nginx on loopback).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> String {
        if peer.ip().is_loopback()
            && let Some(forwarded) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
            && let Some(first) = forwarded
                .split(',')
                .next()
                .map(str::trim)
                .filter(|s| !s.is_empty())
        {
            return first.to_string();
        }
        peer.ip().to_string()
    }
}

impl platform::auth::VerifiesTokens for App {
    fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }
}
