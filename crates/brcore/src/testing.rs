//! The [`Snapstore`] contract as a test suite any store can run (feature `testing`).
//!
//! One async function per clause of the contract, each on its own keys under `conf/<clause>/`,
//! each cleaning up after itself, and [`run_conformance`] that runs them all and reports every
//! clause that failed (not only the first). A store written outside this repository conforms in
//! one line:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn check(my_store: Arc<dyn brcore::Snapstore>) {
//! brcore::testing::run_conformance(my_store).await;
//! # }
//! ```
//!
//! Use a store with room for about 100 MiB (the largest clause renames a 70 MiB object while a
//! lister watches); the suite writes only under `conf/`.

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};

use crate::store::{ByteStream, ObjectMeta, Snapstore, StoreError, WriteOptions};

const MIB: usize = 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift), so a misplaced part shows up as a mismatch.
pub fn data(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// `data` as a stream of `chunk`-sized pieces (the last one shorter).
pub fn stream_of(data: Bytes, chunk: usize) -> ByteStream {
    let chunk = chunk.max(1);
    let pieces: Vec<Result<Bytes, StoreError>> =
        (0..data.len()).step_by(chunk).map(|i| Ok(data.slice(i..(i + chunk).min(data.len())))).collect();
    Box::pin(futures::stream::iter(pieces))
}

/// `good` bytes, then an error, as a producer that dies mid-upload would look.
pub fn failing_stream(good: Bytes, chunk: usize) -> ByteStream {
    let failure =
        StoreError::Other { key: "input".into(), retryable: false, source: "snapshot stream broke (injected)".into() };
    Box::pin(stream_of(good, chunk).chain(futures::stream::iter([Err(failure)])))
}

async fn read_all(store: &dyn Snapstore, key: &str, range: Option<Range<u64>>) -> Result<Vec<u8>, StoreError> {
    let mut s = store.read(key, range).await?;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn keys(list: &[ObjectMeta]) -> Vec<&str> {
    list.iter().map(|m| m.key.as_str()).collect()
}

/// Parts small enough that the multi-part clauses really span parts (5 MiB is S3's minimum).
fn opts() -> WriteOptions {
    WriteOptions::new(3, 5 * MIB)
}

async fn clean(s: &dyn Snapstore, prefix: &str) {
    for m in s.list(prefix).await.expect("list for clean-up") {
        s.delete(&m.key).await.expect("clean-up delete");
    }
    assert!(s.list(prefix).await.unwrap().is_empty(), "{prefix} not empty after clean-up");
}

/// Write, read back, list, overwrite (the whole object is replaced), delete. `write` returns the
/// number of bytes written.
pub async fn write_read_overwrite_delete(s: &dyn Snapstore) {
    let one = data(100_000, 1);
    let n = s.write("conf/basic/one", stream_of(one.clone(), 7_000), &opts()).await.expect("write");
    assert_eq!(n, one.len() as u64, "write returns the bytes written");
    assert_eq!(read_all(s, "conf/basic/one", None).await.expect("read"), one);
    let listed = s.list("conf/basic/").await.expect("list");
    assert_eq!(listed, vec![ObjectMeta { key: "conf/basic/one".into(), size: one.len() as u64 }]);
    let two = data(50_000, 2);
    s.write("conf/basic/one", stream_of(two.clone(), 50_000), &opts()).await.expect("overwrite");
    assert_eq!(read_all(s, "conf/basic/one", None).await.unwrap(), two, "overwrite replaces the whole object");
    s.delete("conf/basic/one").await.expect("delete");
    assert!(s.list("conf/basic/").await.unwrap().is_empty());
}

/// An empty object is an object: listed with size 0, read as no bytes.
pub async fn empty_object(s: &dyn Snapstore) {
    s.write("conf/empty", stream_of(Bytes::new(), 1), &opts()).await.expect("empty write");
    assert_eq!(read_all(s, "conf/empty", None).await.unwrap(), Vec::<u8>::new());
    assert_eq!(s.list("conf/empty").await.unwrap(), vec![ObjectMeta { key: "conf/empty".into(), size: 0 }]);
    s.delete("conf/empty").await.unwrap();
}

/// `read` with a range returns exactly those bytes, at the start, inside, at the end, and none
/// for an empty range.
pub async fn range_reads(s: &dyn Snapstore) {
    let r = data(64 * 1024, 3);
    s.write("conf/range", stream_of(r.clone(), 10_000), &opts()).await.unwrap();
    assert_eq!(read_all(s, "conf/range", Some(0..10)).await.unwrap(), r[0..10]);
    assert_eq!(read_all(s, "conf/range", Some(1000..50_000)).await.unwrap(), r[1000..50_000]);
    let len = r.len() as u64;
    assert_eq!(read_all(s, "conf/range", Some(len - 7..len)).await.unwrap(), r[r.len() - 7..]);
    assert!(read_all(s, "conf/range", Some(5..5)).await.unwrap().is_empty());
    s.delete("conf/range").await.unwrap();
}

/// A multi-part object (12 MiB in 5 MiB parts, fed in odd-sized pieces) reads back byte for
/// byte, whole and across a part boundary.
pub async fn multipart_object(s: &dyn Snapstore) {
    let big = data(12 * MIB, 4);
    let n = s.write("conf/big/multipart", stream_of(big.clone(), 700_001), &opts()).await.expect("multipart write");
    assert_eq!(n, big.len() as u64);
    let back = read_all(s, "conf/big/multipart", None).await.expect("multipart read");
    assert!(back == big, "multipart object read back differs ({} vs {} bytes)", back.len(), big.len());
    assert_eq!(s.list("conf/big/").await.unwrap()[0].size, big.len() as u64);
    let cross = (5 * MIB - 10) as u64..(5 * MIB + 10) as u64;
    assert_eq!(read_all(s, "conf/big/multipart", Some(cross)).await.unwrap(), big[5 * MIB - 10..5 * MIB + 10]);
    s.delete("conf/big/multipart").await.unwrap();
}

/// A write whose stream fails (after several parts, or before the first byte) returns the
/// stream's error and leaves nothing under its key; an existing object of that key is unchanged.
pub async fn failed_write_leaves_nothing(s: &dyn Snapstore) {
    let err = s
        .write("conf/fail/new", failing_stream(data(7 * MIB, 5), MIB), &opts())
        .await
        .expect_err("a failing stream must fail the write");
    assert!(err.to_string().contains("injected"), "the stream's own error comes back: {err}");
    assert!(matches!(s.read("conf/fail/new", None).await.map(|_| ()), Err(StoreError::NotFound { .. })));
    assert!(s.list("conf/fail/").await.unwrap().is_empty(), "a failed upload must not be listed");
    let old = data(30_000, 6);
    s.write("conf/fail/existing", stream_of(old.clone(), 30_000), &opts()).await.unwrap();
    s.write("conf/fail/existing", failing_stream(data(6 * MIB, 7), MIB), &opts())
        .await
        .expect_err("a failing stream must fail the write");
    assert_eq!(read_all(s, "conf/fail/existing", None).await.unwrap(), old, "existing object changed");
    assert_eq!(keys(&s.list("conf/fail/").await.unwrap()), ["conf/fail/existing"]);
    s.write("conf/fail/early", failing_stream(Bytes::new(), 1), &opts()).await.expect_err("early failure");
    assert_eq!(keys(&s.list("conf/fail/").await.unwrap()), ["conf/fail/existing"]);
    clean(s, "conf/fail/").await;
}

/// `list` never shows an upload in progress, even after whole parts went out.
pub async fn upload_in_progress_is_not_listed(store: Arc<dyn Snapstore>) {
    let s = store.as_ref();
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, StoreError>>(1);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { store.write("conf/slow/object", Box::pin(rx), &opts()).await })
    };
    let slow = data(11 * MIB, 8);
    for i in 0..6 {
        tx.send(Ok(slow.slice(i * MIB..(i + 1) * MIB))).await.expect("writer alive");
    }
    // The sends above only return once the writer took the previous pieces, so more than a part
    // has been consumed; give the part upload a moment to reach the store.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.list("conf/slow/").await.unwrap().is_empty(), "upload in progress was listed");
    assert!(s.list("").await.unwrap().iter().all(|m| m.key != "conf/slow/object"));
    for i in 6..11 {
        tx.send(Ok(slow.slice(i * MIB..(i + 1) * MIB))).await.expect("writer alive");
    }
    drop(tx);
    let n = writer.await.expect("join").expect("slow write");
    assert_eq!(n, slow.len() as u64);
    assert_eq!(s.list("conf/slow/").await.unwrap(), vec![ObjectMeta { key: "conf/slow/object".into(), size: n }]);
    s.delete("conf/slow/object").await.unwrap();
}

/// `delete` is idempotent: a second delete, and a delete of a key never written, succeed.
pub async fn delete_is_idempotent(s: &dyn Snapstore) {
    s.write("conf/del/object", stream_of(Bytes::from_static(b"x"), 1), &opts()).await.unwrap();
    s.delete("conf/del/object").await.unwrap();
    s.delete("conf/del/object").await.expect("second delete");
    s.delete("conf/never/existed").await.expect("delete of a missing key");
    assert!(s.list("conf/del/").await.unwrap().is_empty());
}

/// A missing object is [`StoreError::NotFound`] naming the key, for whole and ranged reads.
pub async fn missing_object_is_not_found(s: &dyn Snapstore) {
    for range in [None, Some(0..10), Some(3..3)] {
        match s.read("conf/missing/object", range.clone()).await {
            Err(StoreError::NotFound { key }) => assert_eq!(key, "conf/missing/object"),
            Err(other) => panic!("missing object with {range:?}: wanted NotFound, got {other}"),
            Ok(_) => panic!("missing object with {range:?} was readable"),
        }
    }
}

/// A prefix is a string prefix of keys, not only a directory; `list` is recursive.
pub async fn prefixes_are_string_prefixes(s: &dyn Snapstore) {
    for key in ["conf/n/a", "conf/n/b/c", "conf/n/b/d/e", "conf/nx"] {
        s.write(key, stream_of(Bytes::from(key.to_string()), 4), &opts()).await.unwrap();
    }
    assert_eq!(keys(&s.list("conf/n/").await.unwrap()), ["conf/n/a", "conf/n/b/c", "conf/n/b/d/e"]);
    assert_eq!(keys(&s.list("conf/n").await.unwrap()), ["conf/n/a", "conf/n/b/c", "conf/n/b/d/e", "conf/nx"]);
    assert_eq!(keys(&s.list("conf/n/b/").await.unwrap()), ["conf/n/b/c", "conf/n/b/d/e"]);
    assert_eq!(keys(&s.list("conf/n/b/d/e").await.unwrap()), ["conf/n/b/d/e"]);
    assert!(s.list("conf/n/zzz").await.unwrap().is_empty());
    assert!(s.list("no-such-prefix/").await.unwrap().is_empty());
    assert!(s.list("").await.unwrap().iter().any(|m| m.key == "conf/n/b/d/e"), "list(\"\") is recursive");
    clean(s, "conf/n").await;
}

/// `list` is sorted by key (byte order, whatever the write order; revisions in names are not
/// padded to one width, so this is not revision order).
pub async fn list_is_sorted_by_key(s: &dyn Snapstore) {
    let names = [
        "conf/order/v2/Incr-00000010-00000012-1795606808.gz",
        "conf/order/v2/Full-00000000-00000009-1795606802.gz",
        "conf/order/v2/Full-00000000-100000000-1795606900.gz",
        "conf/order/v2/Full-00000000-00000010-1795606803.gz",
        "conf/order/v1/Backup-1/Full-00000000-00000001-1.gz",
    ];
    for name in names {
        s.write(name, stream_of(Bytes::from_static(b"x"), 1), &opts()).await.unwrap();
    }
    let mut sorted = names.to_vec();
    sorted.sort();
    assert_eq!(keys(&s.list("conf/order/").await.unwrap()), sorted);
    let all = s.list("").await.unwrap();
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "list(\"\") not sorted: {:?}", keys(&all));
    clean(s, "conf/order/").await;
}

/// Keys that could escape the store's root (absolute, `..`, empty segments) are refused.
pub async fn invalid_keys_are_refused(s: &dyn Snapstore) {
    for key in ["/abs", "a/../b", "a//b", "trailing/", ""] {
        assert!(s.write(key, stream_of(Bytes::from_static(b"x"), 1), &opts()).await.is_err(), "write of {key:?}");
        assert!(s.read(key, None).await.is_err(), "read of {key:?}");
    }
    assert!(s.list("").await.unwrap().iter().all(|m| !m.key.starts_with('/') && !m.key.contains("..")));
}

/// `rename` moves a whole multi-part object byte for byte, replaces an existing target, creates
/// the target's "directories", keeps an object renamed onto itself, and refuses a missing source
/// (NotFound naming it) or an invalid key without creating anything.
pub async fn rename_moves_whole_objects(s: &dyn Snapstore) {
    let staging = "conf/rename/.etcdbr-staging/Full-1795606800-1.part";
    let full = "conf/rename/v2/Full-00000000-00000042-1795606800.gz";
    let obj = data(13 * MIB + 12_345, 9);
    s.write(staging, stream_of(obj.clone(), 999_999), &opts()).await.expect("write the staged object");
    let n = s.rename(staging, full).await.expect("rename");
    assert_eq!(n, obj.len() as u64, "rename returns the object's size");
    let back = read_all(s, full, None).await.expect("read the renamed object");
    assert!(back == obj, "renamed object differs ({} vs {} bytes)", back.len(), obj.len());
    assert!(matches!(s.read(staging, None).await.map(|_| ()), Err(StoreError::NotFound { .. })));
    assert_eq!(s.list("conf/rename/").await.unwrap(), vec![ObjectMeta { key: full.into(), size: n }]);

    let newer = data(6 * MIB + 1, 10);
    s.write(staging, stream_of(newer.clone(), MIB), &opts()).await.unwrap();
    assert_eq!(s.rename(staging, full).await.expect("rename over an existing object"), newer.len() as u64);
    assert!(read_all(s, full, None).await.unwrap() == newer, "the replaced object does not hold the new bytes");
    assert_eq!(keys(&s.list("conf/rename/").await.unwrap()), [full]);

    match s.rename("conf/rename/.etcdbr-staging/missing.part", "conf/rename/v2/never").await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "conf/rename/.etcdbr-staging/missing.part"),
        other => panic!("rename of a missing key: wanted NotFound, got {:?}", other.map_err(|e| e.to_string())),
    }
    assert_eq!(keys(&s.list("conf/rename/").await.unwrap()), [full]);

    let deep = "conf/rename/deep/a/b/c/object";
    assert_eq!(s.rename(full, deep).await.expect("rename into new directories"), newer.len() as u64);
    assert!(read_all(s, deep, None).await.unwrap() == newer);
    assert_eq!(keys(&s.list("conf/rename/").await.unwrap()), [deep]);
    assert_eq!(s.rename(deep, deep).await.expect("rename onto itself"), newer.len() as u64);
    assert!(read_all(s, deep, None).await.unwrap() == newer, "rename onto itself changed the object");
    assert!(s.rename(deep, "/abs").await.is_err());
    assert!(s.rename("a/../b", deep).await.is_err());
    clean(s, "conf/rename/").await;
}

/// Size of the object [`rename_is_never_partial_while_listed`] moves: large enough that a store
/// which copies data takes a while (SeaweedFS copies it).
const WATCHED_RENAME: usize = 70 * MIB;

/// While a large rename runs, `list` shows the source, the complete target, or both, never a
/// part of the target.
pub async fn rename_is_never_partial_while_listed(store: Arc<dyn Snapstore>) {
    let s = store.as_ref();
    let big = data(WATCHED_RENAME, 11);
    let (src, dst) = ("conf/watched/.etcdbr-staging/big.part", "conf/watched/v2/Full-00000000-00000099-1.gz");
    s.write(src, stream_of(big.clone(), 3 * MIB + 17), &opts()).await.expect("write the big object");
    let renamer = {
        let store = store.clone();
        tokio::spawn(async move { store.rename(src, dst).await })
    };
    loop {
        let done = renamer.is_finished();
        for m in s.list("conf/watched/").await.expect("list during the rename") {
            assert!(m.key == src || m.key == dst, "unexpected object during the rename: {m:?}");
            assert_eq!(m.size, big.len() as u64, "partial object listed during the rename: {m:?}");
        }
        if done {
            break;
        }
        tokio::task::yield_now().await;
    }
    let n = renamer.await.expect("join").expect("rename of the big object");
    assert_eq!(n, big.len() as u64);
    assert_eq!(s.list("conf/watched/").await.unwrap(), vec![ObjectMeta { key: dst.into(), size: n }]);
    let back = read_all(s, dst, None).await.unwrap();
    assert!(back == big, "big renamed object differs ({} vs {} bytes)", back.len(), big.len());
    s.delete(dst).await.unwrap();
}

/// Runs every clause of the contract against `store`, each to its end, and panics naming every
/// clause that failed (each failure's own panic message is printed as it happens). The store is
/// used through `dyn Snapstore` only; it is left as the suite found it under `conf/`, except for
/// what a failed clause left behind.
pub async fn run_conformance(store: Arc<dyn Snapstore>) {
    let s = store.as_ref();
    let mut failed = Vec::new();
    macro_rules! clause {
        ($name:ident, $fut:expr) => {
            if AssertUnwindSafe($fut).catch_unwind().await.is_err() {
                failed.push(stringify!($name));
            }
        };
    }
    clause!(write_read_overwrite_delete, write_read_overwrite_delete(s));
    clause!(empty_object, empty_object(s));
    clause!(range_reads, range_reads(s));
    clause!(multipart_object, multipart_object(s));
    clause!(failed_write_leaves_nothing, failed_write_leaves_nothing(s));
    clause!(upload_in_progress_is_not_listed, upload_in_progress_is_not_listed(store.clone()));
    clause!(delete_is_idempotent, delete_is_idempotent(s));
    clause!(missing_object_is_not_found, missing_object_is_not_found(s));
    clause!(prefixes_are_string_prefixes, prefixes_are_string_prefixes(s));
    clause!(list_is_sorted_by_key, list_is_sorted_by_key(s));
    clause!(invalid_keys_are_refused, invalid_keys_are_refused(s));
    clause!(rename_moves_whole_objects, rename_moves_whole_objects(s));
    clause!(rename_is_never_partial_while_listed, rename_is_never_partial_while_listed(store.clone()));
    assert!(failed.is_empty(), "{store:?} breaks the Snapstore contract in: {}", failed.join(", "));
}
