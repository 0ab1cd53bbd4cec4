//! The server's one error type, [`Error`], and how each kind becomes an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::error;

/// Why a request was not served. Each variant maps to one status code
/// ([`Error::status`]); the body is the message, one line of text.
///
/// Client mistakes (4xx) are not logged as errors: they are the client's to fix. Server
/// failures (5xx) are logged once, where the response is built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A query parameter has a value the endpoint does not accept (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The endpoint changes state and the request lacks the configured bearer token (401).
    #[error("this endpoint needs `Authorization: Bearer <token>` (the server's --server-auth-token)")]
    Unauthorized,
    /// The endpoint has nothing to act on in this configuration, as in the reference: snapshots
    /// without a store (405).
    #[error("{0}")]
    NotConfigured(String),
    /// The endpoint has nothing to show in this configuration (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with work in progress: a snapshot while initialization replaces
    /// the data dir, or a second full snapshot while one runs (409).
    #[error("{0}")]
    Busy(String),
    /// The request cannot be served now, and waiting or configuration may change that (503).
    #[error("{0}")]
    Unavailable(String),
    /// A backup, restore or store operation failed (500).
    #[error(transparent)]
    Backup(#[from] brcore::error::Error),
    /// The snapshotter ran the requested snapshot or defragmentation and it failed (500); the
    /// message is the snapshotter's error (store, etcd, disk), which the snapshotter also logged.
    #[error("snapshot failed: {0}")]
    SnapshotFailed(String),
    /// The etcd config file for `/config` is missing or not understood (500).
    #[error("etcd config {path}: {why}")]
    EtcdConfig {
        /// The file (`$ETCD_CONF`).
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// The leader's sidecar, to which a follower forwards snapshot requests, could not be
    /// reached or answered garbage (502).
    #[error("the leader's sidecar: {0}")]
    Upstream(String),
    /// Anything else that is the server's fault (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::NotConfigured(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Busy(_) => StatusCode::CONFLICT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
            Error::Backup(_) | Error::SnapshotFailed(_) | Error::EtcdConfig { .. } | Error::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        if status.is_server_error() {
            error!(status = status.as_u16(), "{message}");
        }
        let mut response = (status, format!("{message}\n")).into_response();
        if matches!(self, Error::Unauthorized)
            && let Ok(v) = axum::http::HeaderValue::from_str("Bearer")
        {
            response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, v);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status() {
        assert_eq!(Error::BadRequest("x".into()).status(), StatusCode::BAD_REQUEST);
        assert_eq!(Error::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Error::NotConfigured("x".into()).status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(Error::Busy("x".into()).status(), StatusCode::CONFLICT);
        assert_eq!(Error::Unavailable("x".into()).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Error::Upstream("x".into()).status(), StatusCode::BAD_GATEWAY);
        let e = Error::from(brcore::error::Error::not_found("no full snapshot"));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let r = Error::Unauthorized.into_response();
        assert_eq!(r.headers().get("www-authenticate").map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
    }
}
