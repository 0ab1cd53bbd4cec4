//! opendal's errors as the domain's [`StoreError`]s, with the kinds every caller maps (exit
//! codes, HTTP statuses): [`Call`], one operation's operator with the retry layer that records
//! whether a failure was retried (the mark of a temporary one), and the mapping itself; every
//! error names its object and its store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use brcore::StoreError;
use opendal::layers::{RetryEvent, RetryLayer};
use opendal::{ErrorKind, Operator};
use tracing::warn;

use crate::config::Provider;

/// Retries of a temporary failure (so at most 5 attempts), and the backoff between them.
const RETRIES: usize = 4;
const RETRY_MIN_DELAY: Duration = Duration::from_millis(500);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(10);

/// A listing (or check) that finds no container at all must not read as "no objects".
pub(super) fn container_missing(container: &str, err: StoreError) -> StoreError {
    match err {
        StoreError::NotFound { key } => StoreError::Other {
            key,
            retryable: false,
            source: format!("bucket/container {container:?} does not exist").into(),
        },
        other => other,
    }
}

/// One store operation: the operator with a retry layer whose notifications set `retried`.
///
/// opendal's retry layer retries only errors marked temporary, and marks every error it returns
/// persistent, so after it `is_temporary` is always false. Whether the failure was of the kind a
/// retry can cure is therefore taken from whether the layer retried during this call: a
/// temporary failure is always retried at least once before it is returned.
#[derive(Clone)]
pub(super) struct Call {
    pub(super) op: Operator,
    provider: Provider,
    /// The store, as errors name it ([`Settings::describe`]).
    store: Arc<str>,
    retried: Arc<AtomicBool>,
}

impl Call {
    pub(super) fn new(base: Operator, provider: Provider, store: Arc<str>) -> Call {
        let retried = Arc::new(AtomicBool::new(false));
        let flag = retried.clone();
        let retry = RetryLayer::new()
            .with_max_times(RETRIES)
            .with_min_delay(RETRY_MIN_DELAY)
            .with_max_delay(RETRY_MAX_DELAY)
            .with_factor(2.0)
            .with_jitter()
            .with_notify(move |e: RetryEvent<'_>| {
                flag.store(true, Ordering::Relaxed);
                warn!(operation = ?e.op, attempt = e.attempt, after = ?e.retry_after, error = %e.err, "retrying store request");
            });
        Call { op: base.layer(retry), provider, store, retried }
    }

    pub(super) fn err(&self, key: &str, e: opendal::Error) -> StoreError {
        in_store(&self.store, map_opendal_error(self.provider, key, e, self.retried.load(Ordering::Relaxed)))
    }

    pub(super) fn io_err(&self, key: &str, e: std::io::Error) -> StoreError {
        in_store(&self.store, map_io_error(self.provider, key, e, self.retried.load(Ordering::Relaxed)))
    }
}

/// A store's failure, named by the store it happened in (the key is the [`StoreError`]'s).
#[derive(Debug, thiserror::Error)]
#[error("{store}: {source}")]
struct InStore {
    store: Arc<str>,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// `e` with the store named in its message: every failure says which object (its key) and
/// which store (`store`, see [`Settings::describe`]).
pub(super) fn in_store(store: &Arc<str>, e: StoreError) -> StoreError {
    match e {
        StoreError::Other { key, retryable, source } => {
            StoreError::Other { key, retryable, source: Box::new(InStore { store: store.clone(), source }) }
        }
        StoreError::PermissionDenied { key, message } => {
            StoreError::PermissionDenied { key, message: format!("{store}: {message}") }
        }
        other => other,
    }
}

/// Maps an opendal error to the domain's error: NotFound and PermissionDenied by kind; the rest
/// is retryable when it was temporary (`retried`: the retry layer retried it before giving up,
/// or opendal still marks it temporary) or rate limited.
pub(super) fn map_opendal_error(provider: Provider, key: &str, e: opendal::Error, retried: bool) -> StoreError {
    match e.kind() {
        ErrorKind::NotFound => StoreError::NotFound { key: key.to_string() },
        ErrorKind::PermissionDenied => StoreError::PermissionDenied {
            key: key.to_string(),
            message: format!(
                "{provider} refused the request ({}); check the credentials, the clock, and the \
                 permissions on the bucket/container",
                e.message()
            ),
        },
        kind => {
            let retryable = retried || e.is_temporary() || kind == ErrorKind::RateLimited;
            StoreError::Other { key: key.to_string(), retryable, source: Box::new(e) }
        }
    }
}

pub(super) fn map_io_error(provider: Provider, key: &str, e: std::io::Error, retried: bool) -> StoreError {
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<opendal::Error>()) {
        Some(Ok(op_err)) => map_opendal_error(provider, key, *op_err, retried),
        Some(Err(other)) => StoreError::Other { key: key.to_string(), retryable: false, source: other },
        None => {
            StoreError::Other { key: key.to_string(), retryable: false, source: Box::new(std::io::Error::from(kind)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::local::LocalFs;
    use super::super::remote::Remote;
    use super::super::{Backend, Settings};
    use super::*;

    #[test]
    fn errors_map_by_kind_and_temporariness() {
        let e = |kind, msg: &str| opendal::Error::new(kind, msg);
        let nf = map_opendal_error(Provider::S3, "k", e(ErrorKind::NotFound, "gone"), false);
        assert!(matches!(nf, StoreError::NotFound { .. }));
        let pd = map_opendal_error(Provider::S3, "k", e(ErrorKind::PermissionDenied, "SignatureDoesNotMatch"), false);
        match pd {
            StoreError::PermissionDenied { message, .. } => {
                assert!(message.contains("SignatureDoesNotMatch") && message.contains("credentials"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let tmp = map_opendal_error(Provider::S3, "k", e(ErrorKind::Unexpected, "503").set_temporary(), false);
        assert!(tmp.is_retryable());
        // What the retry layer returns after giving up: persistent, but retried on the way.
        let gave_up = map_opendal_error(Provider::S3, "k", e(ErrorKind::Unexpected, "503").set_persistent(), true);
        assert!(gave_up.is_retryable(), "retries exhausted is still worth a later retry");
        // The retry layer marks every error persistent; one it never retried is not retryable.
        let bad_request = map_opendal_error(Provider::S3, "k", e(ErrorKind::Unexpected, "400").set_persistent(), false);
        assert!(!bad_request.is_retryable());
        let config = map_opendal_error(Provider::S3, "k", e(ErrorKind::ConfigInvalid, "NoSuchBucket"), false);
        assert!(!config.is_retryable());
        let slow = map_opendal_error(Provider::S3, "k", e(ErrorKind::RateLimited, "SlowDown"), false);
        assert!(slow.is_retryable());
    }

    #[test]
    fn store_errors_name_the_object_and_the_store() {
        let settings = |provider, container: &str, endpoint: Option<&str>| Settings {
            provider,
            container: container.to_string(),
            endpoint_override: endpoint.map(str::to_string),
            env_prefix: String::new(),
            env: Default::default(),
        };
        let s3 = Remote.describe(&settings(Provider::S3, "backups", Some("http://127.0.0.1:8333")));
        assert_eq!(&*s3, "S3 bucket \"backups\" at http://127.0.0.1:8333");
        assert_eq!(&*Remote.describe(&settings(Provider::ABS, "c", None)), "ABS container \"c\"");
        let local = LocalFs::new(PathBuf::from("/b"));
        assert_eq!(&*local.describe(&settings(Provider::Local, "/b", None)), "Local store /b");

        let e = opendal::Error::new(ErrorKind::Unexpected, "connection refused").set_temporary();
        let msg = in_store(&s3, map_opendal_error(Provider::S3, "p/v2/Full-00000000-00000009-1", e, true)).to_string();
        assert!(msg.contains("p/v2/Full-00000000-00000009-1"), "{msg}");
        assert!(msg.contains("S3 bucket \"backups\" at http://127.0.0.1:8333"), "{msg}");
        assert!(msg.contains("connection refused"), "{msg}");
        let e = opendal::Error::new(ErrorKind::PermissionDenied, "AccessDenied");
        let msg = in_store(&s3, map_opendal_error(Provider::S3, "p/v2", e, false)).to_string();
        assert!(msg.contains("p/v2") && msg.contains("S3 bucket \"backups\"") && msg.contains("AccessDenied"), "{msg}");
    }

    #[test]
    fn io_errors_carrying_opendal_errors_keep_their_kind() {
        let e: std::io::Error = opendal::Error::new(ErrorKind::NotFound, "gone").into();
        assert!(matches!(map_io_error(Provider::S3, "k", e, false), StoreError::NotFound { .. }));
        let plain = std::io::Error::other("reset");
        assert!(matches!(map_io_error(Provider::S3, "k", plain, false), StoreError::Other { retryable: false, .. }));
        let e: std::io::Error = opendal::Error::new(ErrorKind::Unexpected, "reset").set_persistent().into();
        assert!(map_io_error(Provider::S3, "k", e, true).is_retryable());
    }
}
