//! What the server tests share.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::sync::Arc;

use brcore::Snapstore;
use brcore::restore::RestorePlan;
use etcd_format::membership::Cluster;
use httpd::Initialization;
use validator::{InitOptions, Initializer, Mode};

/// A Local store in `dir/store` (its temp files in `dir/tmp`), opened as the server opens one.
pub fn local_store(dir: &Path) -> Arc<dyn Snapstore> {
    let temp = dir.join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    snapstore::open(&snapstore::StoreConfig::local(dir.join("store")).with_temp_dir(temp))
        .expect("open the Local store")
}

/// The server's initialization over `store`: a sanity check of `data_dir`, and a restore (four
/// fetchers) as the one member `default` of a cluster whose peer URL is `peer_url`.
pub fn init(store: Arc<dyn Snapstore>, data_dir: PathBuf, peer_url: &str) -> Initialization {
    Initialization {
        initializer: Initializer::new(store),
        options: InitOptions::new(
            Mode::Sanity,
            RestorePlan::new(
                String::new(),
                data_dir,
                Cluster::from_initial_cluster(&format!("default={peer_url}"), "etcd-cluster").expect("cluster"),
                "default",
            )
            .with_max_fetchers(4),
        ),
    }
}
