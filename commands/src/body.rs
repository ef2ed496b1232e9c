//! Request bodies and the checks that need nothing but the body: they run in the extractor,
//! before a budget is spent or a store is asked, so every handler gets values already valid and
//! the fuzz target (`fuzz/`) can drive exactly what a client's bytes reach.

use axum::extract::{FromRequest, Request};
use platform::ApiError;
use platform::json::Json;
use serde::de::DeserializeOwned;

use crate::error::CommandError;

/// A JSON request body and what it is once checked.
pub trait Body: DeserializeOwned {
    type Valid;
    fn validated(self) -> Result<Self::Valid, CommandError>;
}

/// A body of type `T`, parsed (`platform::json::Json`: every rejection is the API error body)
/// and checked: the handler receives `T::Valid`.
pub struct Valid<T: Body>(pub T::Valid);

impl<S, T> FromRequest<S> for Valid<T>
where
    S: Send + Sync,
    T: Body,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(body) = Json::<T>::from_request(request, state).await?;
        Ok(Valid(body.validated()?))
    }
}
