//! etcdbr's domain: backups of etcd and their restore.
//!
//! Owns the words (snapshot, chain, revision, restore plan) and the traits ([`Snapstore`],
//! [`restore::Restorer`]). Talks to object stores only through [`Snapstore`] and reads and writes
//! etcd's files through `etcd-format`.

mod bridge;
pub mod chain;
pub mod cluster;
pub mod compact;
pub mod compress;
pub mod copy;
pub mod delta;
pub mod deltafeed;
pub mod encrypt;
pub mod error;
pub mod etcd;
pub mod fetch;
pub mod gc;
pub mod iothread;
pub mod memory;
pub mod metrics;
pub mod name;
pub mod overlap;
mod proc_metrics;
pub mod rebuild;
pub mod restore;
pub mod secondary;
pub mod snapshotter;
pub mod status;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod verify;

pub use memory::InMemoryStore;
pub use store::{ByteStream, ObjectMeta, Snapstore, SnapstoreExt, StoreError, WriteOptions};
