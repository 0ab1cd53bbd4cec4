//! Object stores (S3 and S3-compatible, Azure Blob, GCS, Swift, OSS) as a [`Backend`]: writes
//! stream through opendal's writer in parts (a multipart or block upload, aborted on failure);
//! renames copy server-side ([`super::copy`]).

use std::sync::Arc;

use async_trait::async_trait;
use brcore::{ByteStream, StoreError, WriteOptions};
use futures::StreamExt;
use opendal::Operator;
use tracing::{Instrument, debug, field, info_span, warn};

use super::error::Call;
use super::{Backend, OpendalStore, Settings};
use crate::Error;
use crate::credentials::Credentials;
use crate::keystone::SwiftSession;

/// Every provider but Local.
pub(super) struct Remote;

#[async_trait]
impl Backend for Remote {
    fn describe(&self, s: &Settings) -> Arc<str> {
        s.describe()
    }

    fn operator(
        &self,
        s: &Settings,
        creds: &Credentials,
        session: Option<&SwiftSession>,
    ) -> Result<Option<Operator>, Error> {
        s.build_operator(creds, session)
    }

    async fn write(
        &self,
        store: &OpendalStore,
        key: &str,
        mut data: ByteStream,
        opts: &WriteOptions,
    ) -> Result<u64, StoreError> {
        let call = store.call(key).await?;
        let op = &call.op;
        let part_size = opts.part_size.max(1);
        let parts = opts.max_parallel_parts.max(1);
        let span = info_span!(
            "snapstore.write",
            provider = %store.provider(),
            key,
            part_size,
            parts,
            bytes = field::Empty
        );
        async {
            let mut writer =
                op.writer_with(key).chunk(part_size).concurrent(parts).await.map_err(|e| call.err(key, e))?;
            let mut written: u64 = 0;
            let streamed: Result<(), StoreError> = async {
                while let Some(item) = data.next().await {
                    let bytes = item?;
                    written += bytes.len() as u64;
                    writer.write(bytes).await.map_err(|e| call.err(key, e))?;
                }
                Ok(())
            }
            .await;
            let result = match streamed {
                Ok(()) => writer.close().await.map(|_| ()).map_err(|e| call.err(key, e)),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // Nothing may become visible: abort the multipart upload / drop the temp file.
                if let Err(abort) = writer.abort().await {
                    warn!(error = %abort, "aborting the failed upload failed; the store may keep invisible parts");
                }
                warn!(error = %e, bytes = written, "upload failed and was aborted");
                return Err(e);
            }
            tracing::Span::current().record("bytes", written);
            debug!(bytes = written, "object stored");
            Ok(written)
        }
        .instrument(span)
        .await
    }

    async fn rename(&self, store: &OpendalStore, call: &Call, from: &str, to: &str) -> Result<u64, StoreError> {
        store.rename_object(call, from, to).await
    }
}
