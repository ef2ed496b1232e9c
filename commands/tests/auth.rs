//! Identity against the running commands tier (real PostgreSQL, Redis and broker).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use schemas::DomainEvent;
use schemas::topics::USER_EVENTS;
use serde_json::{Value, json};
use test_support::{Api, env, unique, wait_for};

fn api() -> Api {
    Api::new(env::commands_url())
}

#[tokio::test]
async fn twenty_concurrent_registrations_of_one_username_yield_one_account() -> anyhow::Result<()> {
    let api = api();
    let username = format!("race{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let attempts = (0..20).map(|i| {
        let api = api.clone();
        let username = username.clone();
        async move {
            api.call(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({"email": format!("{username}.{i}@example.test"), "username": username, "password": "password123"})),
            )
            .await
        }
    });
    let answers = futures::future::join_all(attempts).await;
    let mut created = 0;
    for answer in answers {
        let answer = answer?;
        match answer.status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => assert_eq!(answer.code(), "username_taken", "{}", answer.body),
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert_eq!(created, 1);
    Ok(())
}

/// An e-mail address is unique whatever its case, and registering with one in use answers
/// exactly like a fresh registration (so nobody can test which addresses have accounts) while
/// creating nothing; the address's owner logs in as before.
/// PostgreSQL refuses U+0000 in text; a login or registration carrying it is the client's
/// mistake (400), not the store's (it answered 503; found by schemathesis).
#[tokio::test]
async fn text_with_a_nul_character_is_refused_as_input() -> anyhow::Result<()> {
    let api = Api::new(env::commands_url());
    let name = unique("nul");
    for (path, body) in [
        (
            "/v1/auth/login",
            json!({"login": format!("{name}\u{0}"), "password": "x"}),
        ),
        (
            "/v1/auth/register",
            json!({"email": format!("{name}@example.test"), "username": format!("{name}\u{0}x"), "password": "password-long-enough"}),
        ),
    ] {
        let answer = api.call(Method::POST, path, None, Some(body)).await?;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            answer.body
        );
        assert_eq!(answer.code(), "invalid_input", "{path}: {}", answer.body);
    }
    Ok(())
}

#[tokio::test]
async fn registration_does_not_reveal_which_emails_exist() -> anyhow::Result<()> {
    let api = api();
    let (owner_id, name, password) = api.register("dup").await?;
    let email = format!("{}@EXAMPLE.test", name.to_uppercase());
    let register = |username: String, email: String| {
        let api = api.with_fresh_address();
        async move {
            api.call(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({"email": email, "username": username, "password": "password123"})),
            )
            .await
        }
    };
    let newcomer = unique("other").replace('-', "")[..20].to_string();
    let in_use = register(newcomer.clone(), email.clone()).await?;
    let fresh = register(
        unique("fresh").replace('-', "")[..20].to_string(),
        format!("{}@example.test", unique("fresh")),
    )
    .await?;
    assert_eq!(
        in_use.status, fresh.status,
        "{} / {}",
        in_use.body, fresh.body
    );
    assert_eq!(in_use.status, StatusCode::CREATED);
    let keys = |body: &Value| {
        body.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
    };
    assert_eq!(keys(&in_use.body), keys(&fresh.body));
    assert_eq!(in_use.body["username"], newcomer.as_str());
    // Nothing was created: the newcomer's name does not log in, the owner's address does.
    assert_eq!(
        api.login(&newcomer, "password123").await?.code(),
        "bad_credentials"
    );
    let owner = api.login(&email, &password).await?;
    assert_eq!(owner.status, StatusCode::OK, "{}", owner.body);
    assert_eq!(owner.body["user_id"], owner_id.as_str());
    // A taken user name is said (user names are public), even when the address is taken too.
    let both = register(name.clone(), email).await?;
    assert_eq!(both.status, StatusCode::CONFLICT, "{}", both.body);
    assert_eq!(both.code(), "username_taken");
    Ok(())
}

#[tokio::test]
async fn registration_reaches_the_user_topic_without_secrets() -> anyhow::Result<()> {
    let api = api();
    let (user_id, username, password) = api.register("outbox").await?;
    let events = wait_for(
        "UserRegistered on chat.user-events",
        Duration::from_secs(30),
        || async {
            let events = test_support::log::read_key(
                &env::kafka_brokers(),
                &env::registry_url(),
                USER_EVENTS,
                &user_id,
            )
            .await
            .ok()?;
            (!events.is_empty()).then_some(events)
        },
    )
    .await?;
    let DomainEvent::UserRegistered(registered) = &events[0] else {
        panic!("first user event is {:?}", events[0].kind());
    };
    assert_eq!(registered.username, username);
    assert_eq!(
        registered.envelope.user_id.as_deref(),
        Some(user_id.as_str())
    );
    let json = serde_json::to_string(&events)?;
    assert!(
        !json.contains(&password) && !json.contains("argon2") && !json.contains("@example.test"),
        "{json}"
    );
    Ok(())
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_session() -> anyhow::Result<()> {
    let api = api();
    let user = api.user("rot").await?;
    let me = api
        .call(Method::GET, "/v1/users/me", Some(&user.access_token), None)
        .await?;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["username"], user.username.as_str());

    let rotated = api.refresh(&user.refresh_token).await?;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let second_refresh = rotated.body["refresh_token"].as_str().unwrap().to_string();
    let second_access = rotated.body["access_token"].as_str().unwrap().to_string();
    assert_ne!(second_refresh, user.refresh_token);
    assert_eq!(
        api.call(Method::GET, "/v1/users/me", Some(&second_access), None)
            .await?
            .status,
        StatusCode::OK
    );

    // The spent token comes back: theft. Everything of the session dies.
    let reuse = api.refresh(&user.refresh_token).await?;
    assert_eq!(reuse.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reuse.code(), "session_revoked");
    assert_eq!(
        api.refresh(&second_refresh).await?.status,
        StatusCode::UNAUTHORIZED
    );
    for token in [&user.access_token, &second_access] {
        let answer = api
            .call(Method::GET, "/v1/users/me", Some(token), None)
            .await?;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.code(), "session_revoked");
    }
    // A new login is a new session and works.
    let again = api.login(&user.username, &user.password).await?;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        api.refresh("garbage").await?.status,
        StatusCode::UNAUTHORIZED
    );
    Ok(())
}

#[tokio::test]
async fn logout_ends_the_session_at_once() -> anyhow::Result<()> {
    let api = api();
    let user = api.user("bye").await?;
    let out = api
        .call(
            Method::POST,
            "/v1/auth/logout",
            Some(&user.access_token),
            None,
        )
        .await?;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let me = api
        .call(Method::GET, "/v1/users/me", Some(&user.access_token), None)
        .await?;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    let refresh = api
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": user.refresh_token})),
        )
        .await?;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn failed_logins_back_off_per_account() -> anyhow::Result<()> {
    let api = api();
    let (_, username, password) = api.register("brute").await?;
    for _ in 0..5 {
        let answer = api.login(&username, "wrong-password").await?;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.code(), "bad_credentials");
    }
    // Locked for the first step of the ladder (60 s): even the right password is refused.
    let locked = api.login(&username, &password).await?;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.body
    );
    assert_eq!(locked.code(), "rate_limited");
    let retry = locked.retry_after.expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    // Unknown accounts answer exactly like wrong passwords.
    let unknown = api
        .login(
            &unique("nobody").replace('-', "")[..20],
            "whatever-password",
        )
        .await?;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.code(), "bad_credentials");
    Ok(())
}

/// Forged and stale tokens: every variant is a 401 with the error body.
#[tokio::test]
async fn jwt_attacks_are_rejected() -> anyhow::Result<()> {
    let api = api();
    let user = api.user("jwt").await?;
    let parts: Vec<&str> = user.access_token.split('.').collect();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0])?)?;
    let kid = header["kid"].as_str().unwrap().to_string();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());

    let mut forged = Vec::new();
    // alg none, no signature.
    forged.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            parts[1]
        ),
    ));
    // HS256 "signed" with the server's public key (the classic key-confusion attack).
    let public_pem = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in", &env::jwt_private_key_file()])
        .output()?
        .stdout;
    assert!(!public_pem.is_empty());
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    forged.push((
        "HS256 with the public key",
        jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(&public_pem))?,
    ));
    // Properly signed but expired.
    let real_key = EncodingKey::from_rsa_pem(&std::fs::read(env::jwt_private_key_file())?)?;
    let mut rs = Header::new(Algorithm::RS256);
    rs.kid = Some(kid.clone());
    let mut expired = claims.clone();
    expired["exp"] = json!(claims["iat"].as_i64().unwrap() - 3600);
    expired["iat"] = json!(claims["iat"].as_i64().unwrap() - 7200);
    forged.push(("expired", jsonwebtoken::encode(&rs, &expired, &real_key)?));
    // Signed by a key the platform never published.
    let other_key = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()?
        .stdout;
    let mut unknown = Header::new(Algorithm::RS256);
    unknown.kid = Some("not-a-published-key".into());
    forged.push((
        "unknown kid",
        jsonwebtoken::encode(&unknown, &claims, &EncodingKey::from_rsa_pem(&other_key)?)?,
    ));
    // Own kid, foreign key.
    forged.push((
        "foreign key, real kid",
        jsonwebtoken::encode(&rs, &claims, &EncodingKey::from_rsa_pem(&other_key)?)?,
    ));
    // Payload changed after signing (someone else's user id).
    let mut tampered = claims.clone();
    tampered["sub"] = json!(uuid::Uuid::now_v7().to_string());
    forged.push((
        "tampered payload",
        format!("{}.{}.{}", parts[0], b64(&tampered), parts[2]),
    ));
    // Wrong audience, properly signed.
    let mut audience = claims.clone();
    audience["aud"] = json!("someone-else");
    forged.push((
        "wrong audience",
        jsonwebtoken::encode(&rs, &audience, &real_key)?,
    ));
    forged.push(("garbage", "not.a.jwt".into()));

    for (what, token) in &forged {
        let answer = api
            .call(Method::GET, "/v1/users/me", Some(token), None)
            .await?;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            answer.body
        );
        assert!(!answer.code().is_empty(), "{what}: {}", answer.body);
        let post = api
            .call(
                Method::POST,
                "/v1/rooms",
                Some(token),
                Some(json!({"name": "x", "visibility": "public"})),
            )
            .await?;
        assert_eq!(
            post.status,
            StatusCode::UNAUTHORIZED,
            "{what} on a write: {}",
            post.body
        );
    }
    let missing = api.call(Method::GET, "/v1/users/me", None, None).await?;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::UNAUTHORIZED, "missing_token")
    );
    // The real token still works.
    assert_eq!(
        api.call(Method::GET, "/v1/users/me", Some(&user.access_token), None)
            .await?
            .status,
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn malformed_requests_get_error_bodies_and_the_service_keeps_serving() -> anyhow::Result<()> {
    let api = api();
    let user = api.user("bad").await?;
    let token = Some(user.access_token.as_str());
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/auth/register",
            "application/json",
            b"{not json".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "/v1/auth/register",
            "application/json",
            br#"{"email": 5, "username": [], "password": null}"#.to_vec(),
            400,
            "invalid_input",
        ),
        (
            "/v1/auth/register",
            "application/json",
            br#"{"email":"a@b.co","username":"ab","password":"password123"}"#.to_vec(),
            400,
            "invalid_input",
        ),
        (
            "/v1/auth/register",
            "application/json",
            br#"{"email":"a@b.co","username":"okname","password":"short"}"#.to_vec(),
            400,
            "invalid_input",
        ),
        (
            "/v1/auth/register",
            "text/plain",
            b"hello".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/auth/login",
            "application/json",
            br#"{"login": "x"}"#.to_vec(),
            400,
            "invalid_input",
        ),
        (
            "/v1/rooms",
            "application/json",
            br#"{"name": "x", "visibility": "secret"}"#.to_vec(),
            400,
            "invalid_input",
        ),
        (
            "/v1/rooms",
            "application/json",
            br#"{"name": "   ", "visibility": "public"}"#.to_vec(),
            400,
            "invalid_input",
        ),
        (
            "/v1/rooms",
            "application/json",
            format!(
                r#"{{"name": "{}", "visibility": "public"}}"#,
                "x".repeat(100_000)
            )
            .into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "/v1/rooms/not-a-uuid/messages",
            "application/json",
            br#"{"client_msg_id":"a","content":"x"}"#.to_vec(),
            400,
            "invalid_input",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let answer = api
            .raw(Method::POST, path, token, content_type, body)
            .await?;
        assert_eq!(answer.status.as_u16(), status, "{path}: {}", answer.body);
        assert_eq!(answer.code(), code, "{path}: {}", answer.body);
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let room = api.create_room(&user, "public").await?;
    let long = "x".repeat(4001);
    for (content, code) in [
        ("", "invalid_input"),
        ("   ", "invalid_input"),
        (long.as_str(), "invalid_input"),
    ] {
        let answer = api.post(&user, &room, &unique("c"), content).await?;
        assert_eq!(
            (answer.status.as_u16(), answer.code()),
            (400, code),
            "{}",
            answer.body
        );
    }
    let bad_key = api
        .post(&user, &room, "spaces are not allowed", "hi")
        .await?;
    assert_eq!(bad_key.status, StatusCode::BAD_REQUEST);
    let unknown = api
        .call(Method::GET, "/v1/nothing/here", None, None)
        .await?;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // Still serving.
    assert_eq!(
        api.call(Method::GET, "/healthz", None, None).await?.status,
        StatusCode::OK
    );
    assert_eq!(
        api.post(&user, &room, &unique("c"), "still here")
            .await?
            .status,
        StatusCode::CREATED
    );
    Ok(())
}

#[tokio::test]
async fn failed_logins_back_off_per_client_address() -> anyhow::Result<()> {
    // One address (this Api's X-Forwarded-For) spraying wrong passwords at many accounts.
    let api = api();
    let (_, victim, password) = api.register("spray").await?;
    for i in 0..20 {
        let answer = api
            .login(
                &format!(
                    "nobody{i}{}",
                    &uuid::Uuid::now_v7().simple().to_string()[20..]
                ),
                "guess-guess",
            )
            .await?;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "attempt {i}: {}",
            answer.body
        );
    }
    let locked = api.login(&victim, &password).await?;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.body
    );
    assert!(locked.retry_after.is_some());
    // The account itself is fine from another address.
    let elsewhere = Api::new(env::commands_url());
    assert_eq!(
        elsewhere.login(&victim, &password).await?.status,
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn the_jwks_names_the_key_tokens_are_signed_with() -> anyhow::Result<()> {
    let api = api();
    let user = api.user("jwks").await?;
    let jwks = api.call(Method::GET, "/v1/auth/jwks", None, None).await?;
    assert_eq!(jwks.status, StatusCode::OK);
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD.decode(user.access_token.split('.').next().unwrap())?,
    )?;
    assert_eq!(header["alg"], "RS256");
    let keys = jwks.body["keys"].as_array().expect("keys");
    let key = keys
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the token's kid is published");
    assert_eq!(key["kty"], "RSA");
    assert!(key.get("d").is_none(), "no private part in the JWK set");
    Ok(())
}

/// Fifty guesses sent at once get no more password checks than five sent one after another:
/// the attempt is counted before the password is verified.
#[tokio::test]
async fn parallel_guesses_cannot_outrun_the_account_backoff() -> anyhow::Result<()> {
    let api = api();
    let (_, username, _) = api.register("swarm").await?;
    let guesses = (0..50).map(|i| {
        // Each guess from its own address, so only the account's budget applies.
        let api = Api::new(env::commands_url());
        let username = username.clone();
        async move { api.login(&username, &format!("wrong-{i}")).await }
    });
    let answers = futures::future::join_all(guesses).await;
    let (mut verified, mut refused) = (0, 0);
    for answer in answers {
        let answer = answer?;
        match answer.status {
            StatusCode::UNAUTHORIZED => verified += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(answer.retry_after.is_some(), "{}", answer.body);
                refused += 1
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert_eq!(
        (verified, refused),
        (5, 45),
        "five checked passwords, the rest refused"
    );
    Ok(())
}

/// Parallel guesses at many accounts from one address stop at the address's budget (20).
#[tokio::test]
async fn parallel_spraying_cannot_outrun_the_address_backoff() -> anyhow::Result<()> {
    let api = api();
    let guesses = (0..60).map(|i| {
        let api = api.clone();
        async move {
            let login = format!(
                "nobody{i}{}",
                &uuid::Uuid::now_v7().simple().to_string()[20..]
            );
            api.login(&login, "guess-guess").await
        }
    });
    let answers = futures::future::join_all(guesses).await;
    let mut verified = 0;
    for answer in answers {
        let answer = answer?;
        match answer.status {
            StatusCode::UNAUTHORIZED => verified += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert_eq!(verified, 20, "the address's budget, however many at once");
    Ok(())
}

/// An account's user name and e-mail address are two spellings of one login: guesses through
/// either count against one budget.
#[tokio::test]
async fn username_and_email_share_one_budget() -> anyhow::Result<()> {
    let (_, username, password) = api().register("twoname").await?;
    let email = format!("{username}@EXAMPLE.test");
    for (i, login) in [&username, &email, &username, &email, &username]
        .into_iter()
        .enumerate()
    {
        let answer = Api::new(env::commands_url())
            .login(login, "wrong-password")
            .await?;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "guess {i}: {}",
            answer.body
        );
    }
    let locked = Api::new(env::commands_url())
        .login(&email, &password)
        .await?;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.body
    );
    Ok(())
}

/// Anonymous identity calls spend their client address's budget: registrations (20 at once,
/// one per 10 s) and refreshes (30 at once, one per second).
#[tokio::test]
async fn anonymous_calls_spend_the_address_budget() -> anyhow::Result<()> {
    let api = api();
    let mut statuses = Vec::new();
    for i in 0..24 {
        let name = format!(
            "addr{i}x{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let answer = api
            .call(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({"email": format!("{name}@example.test"), "username": name, "password": "password123"})),
            )
            .await?;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer.code(), "rate_limited");
            assert!(answer.retry_after.is_some_and(|s| (1..=10).contains(&s)));
        }
        statuses.push(answer.status.as_u16());
    }
    let created = statuses.iter().filter(|s| **s == 201).count();
    assert!(
        (20..=21).contains(&created) && statuses.iter().all(|s| *s == 201 || *s == 429),
        "{statuses:?}"
    );
    // Another address registers as usual.
    api.with_fresh_address().register("addr").await?;

    let mut refused = 0;
    for _ in 0..40 {
        let answer = api
            .call(
                Method::POST,
                "/v1/auth/refresh",
                None,
                Some(json!({"refresh_token": "not-a-token"})),
            )
            .await?;
        match answer.status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("{other}: {}", answer.body),
        }
    }
    assert!(refused >= 5, "{refused} of 40 refreshes refused");
    Ok(())
}

/// A session ends at its absolute lifetime however often it refreshes (here its end is moved
/// into the past in PostgreSQL, the session store), and no refresh token outlives it.
#[tokio::test]
async fn a_session_ends_at_its_absolute_lifetime_however_often_it_refreshes() -> anyhow::Result<()>
{
    let api = api();
    let user = api.user("lifetime").await?;
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD.decode(user.access_token.split('.').nth(1).unwrap_or_default())?,
    )?;
    let sid = uuid::Uuid::parse_str(claims["sid"].as_str().unwrap_or_default())?;
    let pool = sqlx::PgPool::connect(&env::pg_url()).await?;
    let schema = std::env::var("CHAT_COMMANDS_PG_SCHEMA").unwrap_or_else(|_| "identity".into());
    // Ten minutes left: a refresh works, and the new refresh token ends with the session.
    sqlx::query(&format!(
        "UPDATE {schema}.sessions SET expires_at = now() + interval '10 minutes' WHERE id = $1"
    ))
    .bind(sid)
    .execute(&pool)
    .await?;
    let renewed = api.refresh(&user.refresh_token).await?;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.body);
    let beyond: bool = sqlx::query_scalar(&format!(
        "SELECT bool_or(t.expires_at > s.expires_at) FROM {schema}.refresh_tokens t \
         JOIN {schema}.sessions s ON s.id = t.session_id WHERE s.id = $1 AND t.spent_at IS NULL"
    ))
    .bind(sid)
    .fetch_one(&pool)
    .await?;
    assert!(!beyond, "a refresh token outlives its session");
    // Past the end: refused, though the refresh token itself is fresh.
    sqlx::query(&format!(
        "UPDATE {schema}.sessions SET expires_at = now() - interval '1 second' WHERE id = $1"
    ))
    .bind(sid)
    .execute(&pool)
    .await?;
    let token = renewed.body["refresh_token"].as_str().unwrap_or_default();
    let ended = api.refresh(token).await?;
    assert_eq!(ended.status, StatusCode::UNAUTHORIZED, "{}", ended.body);
    Ok(())
}
