//! The reference's rules for each Lease as pure functions: the current Lease in, the merge patch
//! to send out (`pkg/health/heartbeat/heartbeat.go` at v0.43.0).
//!
//! The reference computes its patches with controller-runtime's `client.MergeFrom`: a JSON
//! merge patch of the fields it changed. These functions send the same fields.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::{Lease, LeaseError, micro_time};

/// A snapshot Lease's `holderIdentity` as a revision (`None` when unset).
fn held_revision(name: &str, lease: &Lease) -> Result<Option<i64>, LeaseError> {
    match lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| LeaseError::BadHolderIdentity { name: name.to_string(), value: v.to_string() }),
    }
}

fn as_i64(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

/// The patch that renews the full-snapshot Lease `name` for a full snapshot whose last
/// revision is `revision`, created at `created` (`UpdateFullSnapshotLease`):
///
/// - a Lease holding a higher revision is left alone (`None`);
/// - else `renewTime` becomes the snapshot's creation time, and `holderIdentity` the revision
///   when it was unset or lower;
/// - the patch carries the `resourceVersion` the Lease was read at (the reference's
///   `MergeFromWithOptimisticLock`), so a concurrent writer makes it fail with a conflict
///   instead of being overwritten.
pub fn full_snapshot_patch(
    name: &str,
    lease: &Lease,
    revision: u64,
    created: SystemTime,
) -> Result<Option<Value>, LeaseError> {
    let held = held_revision(name, lease)?;
    let revision = as_i64(revision);
    if held.is_some_and(|h| h > revision) {
        return Ok(None);
    }
    let mut spec = Map::new();
    spec.insert("renewTime".into(), json!(micro_time(created)));
    if held.is_none_or(|h| h < revision) {
        spec.insert("holderIdentity".into(), json!(revision.to_string()));
    }
    let mut patch = json!({ "spec": spec });
    if let Some(rv) = &lease.metadata.resource_version {
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    Ok(Some(patch))
}

/// The patch that renews the delta-snapshot Lease `name` after a delta round at `now`
/// (`UpdateDeltaSnapshotLease`): `renewTime` is `now`; `holderIdentity` becomes the newest
/// delta's last revision when it was unset or lower, or `0` when no delta followed the newest
/// full snapshot and it was unset. Not conditional on the `resourceVersion`, as in the
/// reference.
pub fn delta_snapshot_patch(
    name: &str,
    lease: &Lease,
    newest_delta: Option<u64>,
    now: SystemTime,
) -> Result<Value, LeaseError> {
    let held = held_revision(name, lease)?;
    let mut spec = Map::new();
    spec.insert("renewTime".into(), json!(micro_time(now)));
    match newest_delta.map(as_i64) {
        Some(rev) if held.is_none_or(|h| h < rev) => {
            spec.insert("holderIdentity".into(), json!(rev.to_string()));
        }
        Some(_) => {}
        None if held.is_none() => {
            spec.insert("holderIdentity".into(), json!("0"));
        }
        None => {}
    }
    Ok(json!({ "spec": spec }))
}

/// The patch that renews the member Lease (`RenewMemberLease`): `holderIdentity` is
/// `identity`, `renewTime` is `now`, and each of `annotations` is set (others are kept). Only
/// what differs from `lease` is sent, as `client.MergeFrom` does; `renewTime` always differs.
pub fn member_patch(lease: &Lease, identity: &str, annotations: &BTreeMap<String, String>, now: SystemTime) -> Value {
    let mut spec = Map::new();
    if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(identity) {
        spec.insert("holderIdentity".into(), json!(identity));
    }
    spec.insert("renewTime".into(), json!(micro_time(now)));
    let mut patch = json!({ "spec": spec });
    let current = lease.metadata.annotations.as_ref();
    let changed: Map<String, Value> = annotations
        .iter()
        .filter(|(k, v)| current.and_then(|c| c.get(*k)) != Some(*v))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if !changed.is_empty() {
        patch["metadata"] = json!({ "annotations": changed });
    }
    patch
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn lease(holder: Option<&str>, rv: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some(rv.into()),
                annotations: Some([("keep".to_string(), "me".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec { holder_identity: holder.map(str::to_string), ..LeaseSpec::default() }),
        }
    }

    const T: Duration = Duration::from_micros(1_795_607_409_123_456);

    #[test]
    fn the_full_snapshot_lease_never_goes_back_and_is_conditional() {
        let at = UNIX_EPOCH + T;
        let p = full_snapshot_patch("l", &lease(None, "7"), 166, at).unwrap().unwrap();
        assert_eq!(
            p,
            json!({"metadata": {"resourceVersion": "7"}, "spec": {"holderIdentity": "166", "renewTime": "2026-11-25T11:50:09.123456Z"}})
        );
        let p = full_snapshot_patch("l", &lease(Some("100"), "8"), 166, at).unwrap().unwrap();
        assert_eq!(p["spec"]["holderIdentity"], "166");
        let p = full_snapshot_patch("l", &lease(Some("166"), "8"), 166, at).unwrap().unwrap();
        assert_eq!(p["spec"].get("holderIdentity"), None, "the same revision: only renewed");
        assert_eq!(p["spec"]["renewTime"], "2026-11-25T11:50:09.123456Z");
        assert_eq!(
            full_snapshot_patch("l", &lease(Some("200"), "8"), 166, at).unwrap(),
            None,
            "a higher revision stays"
        );
        let e = full_snapshot_patch("l", &lease(Some("x"), "8"), 166, at).unwrap_err();
        assert_eq!(e, LeaseError::BadHolderIdentity { name: "l".into(), value: "x".into() });
    }

    #[test]
    fn the_delta_snapshot_lease_starts_at_zero_and_only_grows() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_607_409);
        let renew = json!("2026-11-25T11:50:09.000000Z");
        assert_eq!(
            delta_snapshot_patch("l", &lease(None, "1"), None, now).unwrap(),
            json!({"spec": {"holderIdentity": "0", "renewTime": renew}})
        );
        assert_eq!(
            delta_snapshot_patch("l", &lease(Some("0"), "1"), None, now).unwrap(),
            json!({"spec": {"renewTime": renew}}),
            "no delta since the full snapshot: only renewed"
        );
        assert_eq!(
            delta_snapshot_patch("l", &lease(Some("12"), "1"), Some(40), now).unwrap()["spec"]["holderIdentity"],
            "40"
        );
        assert_eq!(
            delta_snapshot_patch("l", &lease(Some("50"), "1"), Some(40), now).unwrap(),
            json!({"spec": {"renewTime": renew}})
        );
        assert!(delta_snapshot_patch("l", &lease(Some(""), "1"), Some(40), now).is_err());
    }

    #[test]
    fn the_member_lease_sends_what_changed() {
        let now = UNIX_EPOCH + T;
        let ann: BTreeMap<String, String> =
            [("member.etcd.gardener.cloud/tls-enabled".to_string(), "false".to_string())].into();
        let p = member_patch(&lease(None, "3"), "8e9e05c52164694d:cdf818194e3a8c32:Leader", &ann, now);
        assert_eq!(
            p,
            json!({
                "metadata": {"annotations": {"member.etcd.gardener.cloud/tls-enabled": "false"}},
                "spec": {"holderIdentity": "8e9e05c52164694d:cdf818194e3a8c32:Leader", "renewTime": "2026-11-25T11:50:09.123456Z"},
            })
        );
        let mut same = lease(Some("8e9e05c52164694d:cdf818194e3a8c32:Leader"), "4");
        same.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("member.etcd.gardener.cloud/tls-enabled".into(), "false".into());
        let p = member_patch(&same, "8e9e05c52164694d:cdf818194e3a8c32:Leader", &ann, now);
        assert_eq!(p, json!({"spec": {"renewTime": "2026-11-25T11:50:09.123456Z"}}));
    }
}
