//! Embedding etcdbr: prove a backup store restores, without restoring.
//!
//! [`brcore::chain::list_chain`] picks the chain a restore would use (the newest history's
//! latest full snapshot and every delta after it) and checks its continuity by name;
//! [`brcore::verify::verify`] fetches every object, checks hashes, rebuilds the db offline in a
//! temp dir and computes etcd's HashKV at the chain's end: the hash `etcdctl endpoint hashkv
//! --rev <revision>` reports on a cluster that holds the same data.

use std::sync::Arc;

use brcore::Snapstore;
use brcore::chain::{Chain, Target, list_chain};
use brcore::restore::NoProgress;
use brcore::verify::{VerifyPlan, VerifyReport, verify};

/// The chain a restore of the latest state would use now.
pub async fn chain(store: &dyn Snapstore, prefix: &str) -> Result<Chain, brcore::error::Error> {
    list_chain(store, prefix, Target::Latest).await
}

/// Verifies the latest chain under `prefix` offline (no etcd to compare with); the rebuilt db
/// lives in a temp dir that is removed afterwards.
pub async fn verify_store(store: Arc<dyn Snapstore>, prefix: &str) -> Result<VerifyReport, brcore::error::Error> {
    let temp = tempfile::tempdir().map_err(|e| brcore::error::Error::io(std::env::temp_dir(), e))?;
    verify(store, &VerifyPlan::new(prefix, temp.path()), None, Arc::new(NoProgress)).await
}
