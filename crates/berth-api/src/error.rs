//! The API layer's one error type and its one conversion to HTTP. Internal failures are logged
//! with their whole chain and answered with a generic message: a 500 means "we have a bug", a 503
//! "try again".

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_store::StoreError;
use berth_types::api::{ErrorBody, FieldErrorView};
use berth_types::{FieldError, Invalid};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or a parameter cannot be parsed.
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but breaks a rule; each field says which.
    #[error("{0}")]
    Invalid(Invalid),
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn invalid(path: &str, reason: impl Into<String>) -> Self {
        Self::Invalid(Invalid::one(path, reason))
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self::Invalid(e)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::Invalid(Invalid(vec![e]))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::NotFound(format!("no managed service with id {id}")),
            StoreError::Conflict(msg) => Self::Conflict(msg),
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = match &self {
            Self::Internal(source) => {
                let mut chain = source.to_string();
                let mut cur = source.source();
                while let Some(s) = cur {
                    chain.push_str(": ");
                    chain.push_str(&s.to_string());
                    cur = s.source();
                }
                tracing::error!(error = %chain, "internal error");
                ErrorBody {
                    error: "internal error".into(),
                    fields: vec![],
                }
            }
            Self::Invalid(Invalid(fields)) => ErrorBody {
                error: self.to_string(),
                fields: fields
                    .iter()
                    .map(|f| FieldErrorView {
                        path: f.path.clone(),
                        reason: f.reason.clone(),
                    })
                    .collect(),
            },
            other => ErrorBody {
                error: other.to_string(),
                fields: vec![],
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
