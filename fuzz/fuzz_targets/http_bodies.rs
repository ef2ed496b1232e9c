//! A JSON request body for one of the commands tier's endpoints (its first byte picks which),
//! through the same extractor the handlers use: it is accepted, or refused with a 4xx and the
//! API's error body, never a panic or a 5xx.

#![no_main]

use axum::body::{Body as HttpBody, to_bytes};
use axum::extract::FromRequest;
use axum::http::{Request, header};
use axum::response::{IntoResponse, Response};
use commands::body::{Body, Valid};
use commands::identity::handlers::{LoginRequest, RefreshRequest, RegisterRequest};
use commands::rooms_http::{
    BanRequest, CreateRoomRequest, EditRequest, InviteRequest, PostRequest, ReadRequest,
    RoleRequest, UpdateRoomRequest,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

async fn refusal<T: Body>(body: &[u8]) -> Option<Response> {
    let request = Request::builder()
        .method("POST")
        .uri("/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(HttpBody::from(body.to_vec()))
        .expect("a request");
    Valid::<T>::from_request(request, &())
        .await
        .err()
        .map(IntoResponse::into_response)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    futures::executor::block_on(async {
        let refused = match pick % 11 {
            0 => refusal::<CreateRoomRequest>(body).await,
            1 => refusal::<UpdateRoomRequest>(body).await,
            2 => refusal::<InviteRequest>(body).await,
            3 => refusal::<BanRequest>(body).await,
            4 => refusal::<RoleRequest>(body).await,
            5 => refusal::<PostRequest>(body).await,
            6 => refusal::<EditRequest>(body).await,
            7 => refusal::<ReadRequest>(body).await,
            8 => refusal::<RegisterRequest>(body).await,
            9 => refusal::<LoginRequest>(body).await,
            _ => refusal::<RefreshRequest>(body).await,
        };
        let Some(response) = refused else {
            return;
        };
        let status = response.status();
        assert!(status.is_client_error(), "answered {status}");
        let bytes = to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("the body");
        let error: Value = serde_json::from_slice(&bytes).expect("a JSON error body");
        assert!(
            error["error"]["code"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        );
        assert!(error["error"]["message"].is_string());
        assert!(
            bytes.len() < 4096,
            "an error echoes at most a bounded part of the input"
        );
    });
});
