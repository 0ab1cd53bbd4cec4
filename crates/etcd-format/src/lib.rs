//! etcd's on-disk formats in pure, sync Rust.
//!
//! Reads and writes what an etcd member keeps in its data dir: the backend schema stored in
//! bbolt (`member/snap/db`), the WAL (`member/wal/*.wal`) and snap files (`member/snap/*.snap`),
//! and computes etcd's HashKV offline. Knows nothing of tokio, object stores or etcd-client.

pub mod datadir;
pub mod hashkv;
pub mod lease;
pub mod membership;
pub mod meta;
pub mod mvcc;
pub mod raftpb;
pub mod snap;
pub mod snapshot_file;
pub mod status;
pub mod wal;
