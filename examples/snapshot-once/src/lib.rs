//! Embedding etcdbr: take one full snapshot of a live etcd and store it where `etcdbrctl
//! restore` (and the Go etcdbrctl) will find it: `<prefix>/v2/Full-00000000-<revision>-<time>.gz`.
//!
//! The library does the work: [`brcore::etcd::EtcdClient`] talks to etcd,
//! [`brcore::snapshotter::full::take_full_snapshot`] streams etcd's snapshot through gzip into
//! the store (checking etcd's sha256 trailer and naming the object after the db's own revision),
//! and any [`brcore::Snapstore`] holds it.

use std::sync::Arc;

use brcore::Snapstore;
use brcore::etcd::{EtcdClient, EtcdConfig};
use brcore::snapshotter::full::{FullOptions, FullSnapshot, take_full_snapshot};

/// Takes one full snapshot of the etcd at `endpoint` (plain HTTP) into `store` under `prefix`.
pub async fn snapshot_once(
    endpoint: &str,
    store: Arc<dyn Snapstore>,
    prefix: &str,
) -> Result<FullSnapshot, brcore::error::Error> {
    let etcd = EtcdClient::new(EtcdConfig::new(vec![endpoint.to_string()]));
    take_full_snapshot(&etcd, store.as_ref(), &FullOptions::new(prefix)).await
}

/// A store on the local filesystem under `dir`, as `etcdbrctl --storage-provider Local
/// --store-container DIR` opens it.
pub fn local_store(dir: &str) -> Result<Arc<dyn Snapstore>, snapstore::Error> {
    snapstore::open(&snapstore::StoreConfig::local(dir))
}
