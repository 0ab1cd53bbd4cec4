//! Renaming on object stores: the server-side copy, its streaming fallback, and the wait until
//! the copy is complete (Azure's `x-ms-copy-status` included).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brcore::{Snapstore, StoreError};
use opendal::{Buffer, ErrorKind, HttpBody, HttpTransport, HttpTransporter, Operator};
use tracing::{debug, warn};

use super::OpendalStore;
use super::error::Call;
use crate::config::Provider;

/// The largest object S3's CopyObject takes (AWS's limit; SeaweedFS copies more); a larger one
/// is renamed by streaming it. For a larger object opendal switches to its multipart copier
/// (UploadPartCopy), which retries a failed part in place, at once and without bound: when the
/// store died mid-copy in our fault test, the rename hung until the I/O timeout (180 s) for
/// each of the retry layer's attempts. CopyObject is one request that fails like any other.
const S3_COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// The largest object OSS's CopyObject takes; a larger one is renamed by streaming it.
const OSS_COPY_MAX: u64 = 1024 * 1024 * 1024;
/// The largest object Swift's server-side copy takes; a larger one is renamed by streaming it.
const SWIFT_COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// How long a server-side copy may take to show up complete under its new key. Azure's Copy
/// Blob may answer "pending" and finish in the background (a few GiB at tens of MB/s); the
/// source is only deleted once the copy is complete.
const COPY_SETTLE_LIMIT: Duration = Duration::from_secs(300);
/// First and longest pause between two checks of a copy that is not complete yet.
const COPY_POLL_MIN: Duration = Duration::from_millis(200);
const COPY_POLL_MAX: Duration = Duration::from_secs(5);

/// Renaming on object stores: the server-side copy, its fallback, and the wait for the copy.
impl OpendalStore {
    /// Renames on an object store: server-side copy where it can, else streaming; then deletes
    /// `from`. `from` is untouched on every error path.
    pub(super) async fn rename_object(&self, call: &Call, from: &str, to: &str) -> Result<u64, StoreError> {
        let size = call.op.stat(from).await.map_err(|e| call.err(from, e))?.content_length();
        let span = tracing::Span::current();
        if let Some(why) = self.no_server_copy(&call.op, size) {
            span.record("method", "stream");
            debug!(reason = why, bytes = size, "streaming the object to its new key");
            return brcore::store::rename_by_streaming(self, from, to).await;
        }
        span.record("method", "server-copy");
        // On Azure, a transport that notes x-ms-copy-status, which tells a Copy Blob still
        // running in the background from a finished one.
        let (op, copy_status) = match self.s.provider {
            Provider::ABS => {
                let (op, slot) = with_copy_status_probe(&call.op);
                (op, Some(slot))
            }
            _ => (call.op.clone(), None),
        };
        debug!(bytes = size, "server-side copy started");
        // One request per copy (no `chunk`): S3's CopyObject, Azure's Copy Blob, Swift's and
        // OSS's copy; GCS's rewrite loops on its token.
        if let Err(e) = op.copy(from, to).await {
            // A failed copy leaves nothing new under `to` (the copies are atomic). A refusal
            // (400, 501, too large) is worth a try by streaming; a store that is down or denies
            // access is not.
            return match call.err(from, e) {
                StoreError::Other { retryable: false, source, .. } => {
                    span.record("method", "stream");
                    warn!(error = %source, "server-side copy refused; streaming the object to its new key instead");
                    brcore::store::rename_by_streaming(self, from, to).await
                }
                other => Err(other),
            };
        }
        self.await_complete_copy(call, &op, copy_status.as_ref(), to, size).await?;
        brcore::store::delete_renamed_source(self, from).await;
        Ok(size)
    }

    /// Why `op` should not copy an object of `size` bytes server-side, if it should not.
    fn no_server_copy(&self, op: &Operator, size: u64) -> Option<&'static str> {
        if !op.info().capability().copy {
            return Some("the service has no server-side copy");
        }
        match self.s.provider {
            Provider::S3 | Provider::ECS | Provider::OCS if size > S3_COPY_MAX => {
                Some("larger than S3 CopyObject's 5 GiB limit")
            }
            Provider::OSS if size > OSS_COPY_MAX => Some("larger than OSS CopyObject's 1 GiB limit"),
            Provider::Swift if size > SWIFT_COPY_MAX => Some("larger than Swift's 5 GiB copy limit"),
            _ => None,
        }
    }

    /// Waits until `to` holds all `size` bytes of a finished copy. An Azure copy that ended
    /// failed or aborted leaves a partial blob, which is deleted; a copy that does not finish
    /// within [`COPY_SETTLE_LIMIT`] is a retryable error, and nothing is deleted.
    async fn await_complete_copy(
        &self,
        call: &Call,
        op: &Operator,
        copy_status: Option<&CopyStatusSlot>,
        to: &str,
        size: u64,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + COPY_SETTLE_LIMIT;
        let mut pause = COPY_POLL_MIN;
        loop {
            if let Some(slot) = copy_status {
                slot.clear();
            }
            let len = match op.stat(to).await {
                Ok(meta) => Some(meta.content_length()),
                // Some S3-compatible stores show a new key a moment late.
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(call.err(to, e)),
            };
            let status = copy_status.and_then(CopyStatusSlot::get);
            match copy_progress(status.as_deref(), len, size) {
                CopyProgress::Complete => {
                    debug!(status = status.as_deref().unwrap_or("none"), bytes = size, "server-side copy complete");
                    return Ok(());
                }
                CopyProgress::Failed(why) => {
                    if let Err(e) = self.delete(to).await {
                        warn!(key = to, error = %e, "cannot delete the partial copy");
                    }
                    return Err(StoreError::Other { key: to.to_string(), retryable: true, source: why.into() });
                }
                CopyProgress::Running => {}
            }
            if Instant::now() + pause > deadline {
                return Err(StoreError::Other {
                    key: to.to_string(),
                    retryable: true,
                    source: format!(
                        "the server-side copy did not complete within {COPY_SETTLE_LIMIT:?} (copy status {}, \
                         {} of {size} bytes visible); the source is kept",
                        status.as_deref().unwrap_or("none"),
                        len.map_or_else(|| "no object".to_string(), |l| l.to_string()),
                    )
                    .into(),
                });
            }
            debug!(status = status.as_deref().unwrap_or("none"), len = ?len, size, "copy not complete yet");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(COPY_POLL_MAX);
        }
    }
}

/// Where a server-side copy stands, from the destination's size and, on Azure, its
/// `x-ms-copy-status`.
#[derive(Debug, PartialEq, Eq)]
enum CopyProgress {
    /// `to` holds the whole object.
    Complete,
    /// Not there yet: still copying, or not visible yet.
    Running,
    /// The copy ended without the object (Azure `failed` or `aborted`).
    Failed(String),
}

fn copy_progress(status: Option<&str>, len: Option<u64>, size: u64) -> CopyProgress {
    match status {
        Some(s) if s.eq_ignore_ascii_case("failed") || s.eq_ignore_ascii_case("aborted") => {
            CopyProgress::Failed(format!("the server-side copy ended {s}; the source is kept"))
        }
        // The destination of a running Azure copy may already show the full length.
        Some(s) if s.eq_ignore_ascii_case("pending") => CopyProgress::Running,
        _ if len == Some(size) => CopyProgress::Complete,
        _ => CopyProgress::Running,
    }
}

/// The last `x-ms-copy-status` a probed operator received.
#[derive(Clone, Default)]
struct CopyStatusSlot(Arc<Mutex<Option<String>>>);

impl CopyStatusSlot {
    fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|s| s.clone())
    }

    fn clear(&self) {
        if let Ok(mut s) = self.0.lock() {
            *s = None;
        }
    }

    fn set(&self, v: &str) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(v.to_string());
        }
    }
}

/// An HTTP transport that passes every request on and notes the `x-ms-copy-status` header of
/// the responses: Azure reports with it whether a Copy Blob finished, and opendal drops it.
struct CopyStatusProbe {
    inner: HttpTransporter,
    slot: CopyStatusSlot,
}

impl HttpTransport for CopyStatusProbe {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        let resp = self.inner.fetch(req).await?;
        if let Some(v) = resp.headers().get("x-ms-copy-status").and_then(|v| v.to_str().ok()) {
            self.slot.set(v);
        }
        Ok(resp)
    }
}

/// `op` with its HTTP transport wrapped in a [`CopyStatusProbe`] (layers kept), and the probe's slot.
fn with_copy_status_probe(op: &Operator) -> (Operator, CopyStatusSlot) {
    let slot = CopyStatusSlot::default();
    let base = op.base_context();
    let probe = CopyStatusProbe { inner: base.http_transport().clone(), slot: slot.clone() };
    let ctx = base.with_http_transport(HttpTransporter::new(probe));
    (op.clone().with_context(ctx), slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_progress_waits_for_azure_status_and_full_size() {
        use CopyProgress::*;
        // S3, GCS, Swift, OSS: no status; complete once the whole size is there.
        assert_eq!(copy_progress(None, Some(10), 10), Complete);
        assert_eq!(copy_progress(None, Some(4), 10), Running);
        assert_eq!(copy_progress(None, None, 10), Running);
        assert_eq!(copy_progress(None, Some(0), 0), Complete);
        // Azure: a pending copy may already show the full length; it is not complete.
        assert_eq!(copy_progress(Some("pending"), Some(10), 10), Running);
        assert_eq!(copy_progress(Some("success"), Some(10), 10), Complete);
        assert_eq!(copy_progress(Some("success"), Some(9), 10), Running);
        for ended in ["failed", "aborted", "Failed"] {
            assert!(matches!(copy_progress(Some(ended), Some(10), 10), Failed(m) if m.contains(ended)), "{ended}");
        }
    }
}
