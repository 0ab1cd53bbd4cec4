//! Data-dir validation: what is wrong with an etcd data dir, as a report of findings, and the
//! initializer that restores a data dir that is missing, corrupt or behind the backups.
//!
//! [`validate`] never fails on bad content: every problem becomes a [`Finding`] with its file
//! (and offset where known), and the findings become one [`Verdict`]. `Err` is kept for I/O
//! failures of the check itself.
//!
//! # What is checked
//!
//! | check | sanity | full |
//! |---|---|---|
//! | wrong-volume guard (`safe_guard` beside the data dir, when a namespace is given) | yes | yes |
//! | layout: `member/`, `member/snap/`, `member/wal/`, `member/snap/db`, at least one WAL segment | yes | yes |
//! | the db's lock (a running etcd holds it: [`Verdict::InUse`], nothing is touched) | yes | yes |
//! | both bbolt meta pages, the file's length against the meta, the current revision | yes | yes |
//! | the db's revision against the latest backup's | yes | yes |
//! | the WAL tail after the db's consistent index (only when the db is behind the backups) | yes | all |
//! | every bbolt page (`bbolt check`: reachability, freelist, key order, bounds) | | yes |
//! | every `key` bucket entry decodes as etcd's `KeyValue` under its revision | | yes |
//! | every WAL record: framing, crc32c chain across segments, record types, index continuity | | yes |
//! | the WAL reaches the db's consistent index (no lost tail) | | yes |
//! | every snap file's crc, and the newest one pairs with the db | | yes |
//!
//! # Behind the backups, and the WAL
//!
//! A db can trail its own WAL: etcd commits the bbolt transaction in batches, so after a crash
//! the db misses the last applied entries, which etcd replays from the WAL at boot. The
//! reference handles this by booting an embedded etcd and polling its revision. We read the
//! WAL instead: each entry after the db's consistent index can raise the revision by at most
//! one, so the data dir is called [`Verdict::Stale`] only when even `db revision + pending
//! entries` is below the backup's revision. This never restores over writes that exist only in
//! the WAL; it may keep a data dir whose WAL entries turn out not to be writes, in which case
//! etcd boots a little behind the last backup, as the reference's 60 s embedded-etcd poll would
//! also allow when the WAL replays slowly.

pub mod check;
pub mod initializer;
pub mod member_data;
mod probe;
pub mod report;
pub mod safeguard;

pub use check::{Options, validate, validate_with};
pub use initializer::{Action, ClusterWaits, InitError, InitOptions, Initializer, Outcome};
pub use member_data::data_report;
pub use report::{Absent, Finding, Mode, Report, Severity, Verdict};
