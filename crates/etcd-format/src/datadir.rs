//! Where an etcd member keeps its files in its data dir: `<data-dir>/member/snap/db` (the
//! bbolt backend), `member/snap/*.snap` (raft snapshots) and `member/wal/*.wal` (the raft log).
//! The one place these names are spelled.

use std::path::{Path, PathBuf};

/// The member dir's name under the data dir.
pub const MEMBER_DIR: &str = "member";

/// `<data_dir>/member`.
pub fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(MEMBER_DIR)
}

/// `<member_dir>/snap`: the db and the raft snapshot files.
pub fn snap_dir(member_dir: &Path) -> PathBuf {
    member_dir.join("snap")
}

/// `<member_dir>/wal`: the WAL segments.
pub fn wal_dir(member_dir: &Path) -> PathBuf {
    member_dir.join("wal")
}

/// `<member_dir>/snap/db`: the bbolt backend.
pub fn db_path(member_dir: &Path) -> PathBuf {
    snap_dir(member_dir).join("db")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_etcds() {
        let member = member_dir(Path::new("/var/etcd/data"));
        assert_eq!(member, Path::new("/var/etcd/data/member"));
        assert_eq!(snap_dir(&member), Path::new("/var/etcd/data/member/snap"));
        assert_eq!(wal_dir(&member), Path::new("/var/etcd/data/member/wal"));
        assert_eq!(db_path(&member), Path::new("/var/etcd/data/member/snap/db"));
    }
}
