//! `/v1/auth/*` and `/v1/users/me`.

use std::net::SocketAddr;

use axum::Json as JsonResponse;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use platform::auth::Caller;
use platform::auth::revoked_session_key;
use schemas::events::{SessionRevoked, UserRegistered};
use schemas::{DomainEvent, Envelope};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::store::{NewSession, Registration, Rotation};
use super::throttle::Attempt;
use super::tokens::{hash_refresh_token, new_refresh_token};
use super::validate;
use crate::app::{App, AppState};
use crate::body::{Body, Valid};
use crate::error::CommandError;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    email: String,
    username: String,
    password: String,
}

/// A registration with its username and e-mail in normal form.
pub struct NewAccount {
    username: String,
    email: String,
    password: String,
}

impl Body for RegisterRequest {
    type Valid = NewAccount;
    fn validated(self) -> Result<NewAccount, CommandError> {
        validate::password(&self.password)?;
        Ok(NewAccount {
            username: validate::username(&self.username)?,
            email: validate::email(&self.email)?,
            password: self.password,
        })
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RegisterResponse {
    user_id: String,
    username: String,
}

#[utoipa::path(post, path = "/v1/auth/register", tag = "identity",
    summary = "Create an account; an e-mail address already in use gets the same answer and no account",
    request_body = RegisterRequest,
    responses((status = 201, description = "registered", body = RegisterResponse), platform::openapi::Refused))]
pub async fn register(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Valid(account): Valid<RegisterRequest>,
) -> Result<impl IntoResponse, CommandError> {
    app.limits
        .registrations
        .check(&app.client_ip(peer, &headers))?;
    let NewAccount {
        username,
        email,
        password,
    } = account;
    let hash = app.passwords.hash(password).await?;
    let user_id = Uuid::now_v7();
    let event: DomainEvent = UserRegistered {
        envelope: Envelope::for_user(user_id.to_string(), Some(user_id.to_string())),
        username: username.clone(),
        display_name: None,
    }
    .into();
    match app
        .store
        .create_user(user_id, &email, &username, &hash, &event)
        .await?
    {
        Registration::Created => tracing::info!(%user_id, %username, "user registered"),
        Registration::EmailInUse => {
            tracing::info!(%username, "registration with an e-mail address in use; answered as if created")
        }
    }
    Ok((
        StatusCode::CREATED,
        JsonResponse(RegisterResponse {
            user_id: user_id.to_string(),
            username,
        }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    login: String,
    password: String,
}

impl Body for LoginRequest {
    type Valid = Self;
    fn validated(self) -> Result<Self, CommandError> {
        if self.login.trim().is_empty() || self.login.len() > 255 || self.password.len() > 1024 {
            return Err(CommandError::invalid("login and password are required"));
        }
        Ok(self)
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
    user_id: String,
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "identity",
    summary = "Log in with username or e-mail; failures back off per account and address",
    request_body = LoginRequest,
    responses((status = 200, description = "a new session", body = TokenPair), platform::openapi::Refused))]
pub async fn login(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Valid(request): Valid<LoginRequest>,
) -> Result<impl IntoResponse, CommandError> {
    let ip = app.client_ip(peer, &headers);
    let account = app.store.find_login(&request.login).await?;
    let attempt = Attempt::new(
        &account
            .as_ref()
            .map_or_else(|| request.login.clone(), |a| a.id.to_string()),
        &ip,
    );
    app.throttle.begin(&attempt).await?;
    let ok = app
        .passwords
        .verify(
            request.password,
            account.as_ref().map(|a| a.password_hash.clone()),
        )
        .await?;
    let account = match account {
        Some(account) if ok => account,
        _ => return Err(CommandError::BadCredentials),
    };
    app.throttle.succeeded(&attempt).await?;
    let session_id = Uuid::now_v7();
    let (refresh_token, refresh_hash) = new_refresh_token();
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    app.store
        .create_session(NewSession {
            id: session_id,
            user_id: account.id,
            refresh_hash: &refresh_hash,
            refresh_ttl: app.config.refresh_token_ttl,
            lifetime: app.config.session_lifetime,
            user_agent,
            ip: &ip,
        })
        .await?;
    record_session(&app, account.id, session_id).await?;
    let access_token = app.signer.issue(
        &account.id.to_string(),
        &session_id.to_string(),
        &account.username,
    )?;
    Ok(JsonResponse(TokenPair {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: app.signer.access_ttl().as_secs(),
        user_id: account.id.to_string(),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RefreshRequest {
    refresh_token: String,
}

impl Body for RefreshRequest {
    type Valid = String;
    fn validated(self) -> Result<String, CommandError> {
        if self.refresh_token.is_empty() || self.refresh_token.len() > 512 {
            return Err(CommandError::Auth(platform::auth::AuthError::Invalid));
        }
        Ok(self.refresh_token)
    }
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "identity",
    summary = "Rotate the refresh token; reusing an old one revokes the session",
    request_body = RefreshRequest,
    responses((status = 200, description = "a new token pair", body = TokenPair), platform::openapi::Refused))]
pub async fn refresh(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Valid(presented): Valid<RefreshRequest>,
) -> Result<impl IntoResponse, CommandError> {
    app.limits.refreshes.check(&app.client_ip(peer, &headers))?;
    let old_hash = hash_refresh_token(&presented);
    let (refresh_token, new_hash) = new_refresh_token();
    let rotation = app
        .store
        .rotate(
            &old_hash,
            &new_hash,
            app.config.refresh_token_ttl,
            |user_id, session_id| revoked_event(user_id, session_id, "refresh_token_reuse"),
        )
        .await?;
    match rotation {
        Rotation::Rotated {
            user_id,
            session_id,
            username,
        } => {
            record_session(&app, user_id, session_id).await?;
            let access_token =
                app.signer
                    .issue(&user_id.to_string(), &session_id.to_string(), &username)?;
            Ok(JsonResponse(TokenPair {
                access_token,
                refresh_token,
                token_type: "Bearer",
                expires_in: app.signer.access_ttl().as_secs(),
                user_id: user_id.to_string(),
            }))
        }
        Rotation::Reused {
            user_id,
            session_id,
        } => {
            tracing::warn!(%user_id, %session_id, "refresh token reused; session revoked");
            mark_revoked(&app, user_id, session_id).await;
            Err(CommandError::Auth(platform::auth::AuthError::Revoked))
        }
        Rotation::Invalid => Err(CommandError::Auth(platform::auth::AuthError::Invalid)),
    }
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "identity",
    summary = "End this session: its tokens stop working in every tier at once",
    responses((status = 204, description = "logged out"), platform::openapi::Refused),
    security(("bearer" = [])))]
pub async fn logout(
    State(app): State<AppState>,
    Caller(claims): Caller,
) -> Result<impl IntoResponse, CommandError> {
    app.limits.sessions.check(&claims.sub)?;
    let (user_id, session_id) = parse_ids(&claims.sub, &claims.sid)?;
    app.store
        .revoke_session(
            session_id,
            "logout",
            &revoked_event(user_id, session_id, "logout"),
        )
        .await?;
    mark_revoked(&app, user_id, session_id).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/auth/jwks", tag = "identity",
    summary = "The public keys access tokens are signed with (JWK set)",
    responses((status = 200, description = "JWK set", body = Object)))]
pub async fn jwks(State(app): State<AppState>) -> impl IntoResponse {
    JsonResponse(app.signer.jwks().clone())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Me {
    user_id: String,
    username: String,
    email: String,
}

#[utoipa::path(get, path = "/v1/users/me", tag = "identity",
    summary = "The caller's account",
    responses((status = 200, description = "the account", body = Me), platform::openapi::Refused),
    security(("bearer" = [])))]
pub async fn me(
    State(app): State<AppState>,
    Caller(claims): Caller,
) -> Result<impl IntoResponse, CommandError> {
    let (user_id, _) = parse_ids(&claims.sub, &claims.sid)?;
    let user = app
        .store
        .user(user_id)
        .await?
        .ok_or(CommandError::NotFound("user"))?;
    Ok(JsonResponse(Me {
        user_id: user.id.to_string(),
        username: user.username,
        email: user.email,
    }))
}

fn parse_ids(sub: &str, sid: &str) -> Result<(Uuid, Uuid), CommandError> {
    match (Uuid::parse_str(sub), Uuid::parse_str(sid)) {
        (Ok(u), Ok(s)) => Ok((u, s)),
        _ => Err(CommandError::Auth(platform::auth::AuthError::Invalid)),
    }
}

fn revoked_event(user_id: Uuid, session_id: Uuid, reason: &str) -> DomainEvent {
    SessionRevoked {
        envelope: Envelope::for_user(user_id.to_string(), Some(user_id.to_string())),
        session_id: session_id.to_string(),
        reason: reason.to_string(),
    }
    .into()
}

/// The seed's `session:{user_id}` hash: the user's latest session and when it was used.
async fn record_session(app: &App, user_id: Uuid, session_id: Uuid) -> Result<(), CommandError> {
    let mut redis = app.redis.clone();
    let key = format!("{}session:{user_id}", app.config.redis_prefix);
    let now = schemas::envelope::now_ms();
    let expires = now + app.config.refresh_token_ttl.as_millis() as i64;
    let _: () = redis::pipe()
        .hset(&key, "session_id", session_id.to_string())
        .ignore()
        .hset(&key, "expires_at", expires)
        .ignore()
        .hset(&key, "last_seen", now)
        .ignore()
        .expire(&key, app.config.refresh_token_ttl.as_secs() as i64)
        .ignore()
        .query_async(&mut redis)
        .await?;
    Ok(())
}

/// Makes every access token of the session fail verification in every tier at once. The
/// revocation itself is already committed (PostgreSQL, and the log through the outbox): a mark
/// that cannot be written now is written by the revocation keeper within a second of Redis
/// answering (`identity::revocations`), and verifiers refuse tokens while Redis is down.
async fn mark_revoked(app: &App, user_id: Uuid, session_id: Uuid) {
    if let Err(e) = write_mark(app, user_id, session_id).await {
        tracing::warn!(%session_id, error = %e, "revocation mark not written now; the keeper will");
    }
}

async fn write_mark(app: &App, user_id: Uuid, session_id: Uuid) -> Result<(), CommandError> {
    let mut redis = app.redis.clone();
    let ttl = app.signer.access_ttl().as_secs() + 60;
    let key = revoked_session_key(&app.config.redis_prefix, &session_id.to_string());
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(1)
        .arg("EX")
        .arg(ttl)
        .query_async(&mut redis)
        .await?;
    let session_key = format!("{}session:{user_id}", app.config.redis_prefix);
    let current: Option<String> = redis::cmd("HGET")
        .arg(&session_key)
        .arg("session_id")
        .query_async(&mut redis)
        .await?;
    if current.as_deref() == Some(session_id.to_string().as_str()) {
        let _: () = redis::cmd("DEL")
            .arg(&session_key)
            .query_async(&mut redis)
            .await?;
    }
    Ok(())
}
