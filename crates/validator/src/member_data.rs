//! What a data dir holds, as a member's sidecar reports it to the other members' sidecars:
//! [`data_report`].
//!
//! A cluster that lost its quorum is restored from the backup only when every member lost its
//! data; a member whose db served the cluster may hold writes no backup has, and restoring
//! the others beside it would fork the history. The question each sidecar answers is therefore
//! not "is the data dir valid" but "could this db hold anything a restore would lose":
//!
//! - no `member/` dir, or a db that cannot be read: [`DataState::Missing`], [`DataState::Invalid`];
//! - a db whose consistent index (the last raft entry applied) is at most the number of members
//!   it lists: it applied nothing but the membership it was created with, by a bootstrap or a
//!   restore, so no leader ever committed anything to it: [`DataState::Bootstrap`], with its
//!   revision (a restore beside it must reach the same one);
//! - anything else: [`DataState::Serving`].
//!
//! The db is read without its lock: a member restored from the backup may already run etcd,
//! waiting for its peers. Reading a db etcd is writing can fail; that is
//! [`DataState::Unknown`], and the asking sidecar asks again.

use std::fs::{File, TryLockError};
use std::path::Path;

use brcore::cluster::{DataReport, DataState};
use etcd_format::meta::DbRevisions;
use etcd_format::mvcc::MEMBERS_BUCKET;

/// What `data_dir` holds, for member `member` (see the module docs). Never fails: every
/// problem is a state with its reason in [`DataReport::detail`].
pub fn data_report(data_dir: &Path, member: &str) -> DataReport {
    let report = |state, detail: String| DataReport {
        member: member.to_string(),
        state,
        revision: None,
        consistent_index: None,
        detail,
    };
    let member_dir = etcd_format::datadir::member_dir(data_dir);
    if !member_dir.is_dir() {
        return report(DataState::Missing, format!("{} does not exist", member_dir.display()));
    }
    let db_path = etcd_format::datadir::db_path(&member_dir);
    // Whether etcd runs on it: a failed read then says nothing about the file.
    let locked = File::open(&db_path).is_ok_and(|f| matches!(f.try_lock_shared(), Err(TryLockError::WouldBlock)));
    let unreadable = |why: String| {
        if locked {
            report(
                DataState::Unknown,
                format!("etcd runs on {} and it could not be read now: {why}", db_path.display()),
            )
        } else {
            report(DataState::Invalid, format!("{}: {why}", db_path.display()))
        }
    };
    let db = match bbolt::Db::open(&db_path) {
        Ok(db) => db,
        Err(e) => return unreadable(format!("cannot be opened: {e}")),
    };
    let revisions = match DbRevisions::read(&db) {
        Ok(r) => r,
        Err(e) => return unreadable(format!("its revision cannot be read: {e}")),
    };
    let members = match db.bucket(MEMBERS_BUCKET) {
        Ok(Some(b)) => {
            let mut n = 0u64;
            for entry in b.iter() {
                match entry {
                    Ok(_) => n += 1,
                    Err(e) => return unreadable(format!("its members cannot be read: {e}")),
                }
            }
            n
        }
        Ok(None) => 0,
        Err(e) => return unreadable(format!("its members cannot be read: {e}")),
    };
    let consistent_index = revisions.consistent_index.unwrap_or(0);
    let (state, detail) = if consistent_index <= members.max(1) {
        (
            DataState::Bootstrap,
            format!(
                "the db applied nothing past its {members} member(s) (consistent index {consistent_index}): \
                 a fresh bootstrap or a restore that never had a leader"
            ),
        )
    } else {
        (DataState::Serving, format!("the db served a cluster (consistent index {consistent_index})"))
    };
    DataReport {
        member: member.to_string(),
        state,
        revision: Some(revisions.current_revision),
        consistent_index: Some(consistent_index),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_unreadable_data_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let r = data_report(&tmp.path().join("none"), "m0");
        assert_eq!((r.state, r.member.as_str()), (DataState::Missing, "m0"));
        std::fs::create_dir_all(tmp.path().join("d/member/snap")).unwrap();
        assert_eq!(data_report(&tmp.path().join("d"), "m0").state, DataState::Invalid, "no db");
        std::fs::write(tmp.path().join("d/member/snap/db"), b"not a bolt file").unwrap();
        let r = data_report(&tmp.path().join("d"), "m0");
        assert_eq!(r.state, DataState::Invalid);
        assert!(r.detail.contains("cannot be opened"), "{}", r.detail);
    }
}
