//! What the server tests share.

use std::path::Path;
use std::sync::Arc;

use brcore::Snapstore;

/// A Local store in `dir/store` (its temp files in `dir/tmp`), opened as the server opens one.
pub fn local_store(dir: &Path) -> Arc<dyn Snapstore> {
    let temp = dir.join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    snapstore::open(&snapstore::StoreConfig::local(dir.join("store")).with_temp_dir(temp))
        .expect("open the Local store")
}
