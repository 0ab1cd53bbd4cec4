//! The restore's delta pipeline: deltas fetched and decoded in parallel, handed to the db
//! writer in order, in one memory budget.
//!
//! Each delta is decoded as it streams ([`DeltaDecoder`]): decompressed in 256 KiB pieces,
//! hashed and parsed into [`EventBatch`]es of about 1 MiB, which go to the writer through a
//! channel of their own. The writer reads the deltas' channels in chain order ([`DeltaFeed`]
//! is the iterator it reads). What is held in memory, and what bounds it:
//! - **compressed objects**: a delta whose stored size fits in half the budget is read whole
//!   before it is decoded (so the store connection is never left waiting on the writer; on the
//!   Local store straight from its file into one buffer); the
//!   fetches take their size from that half in chain order and wait until it is free. A delta
//!   larger than that half waits until it has the half to itself and is then decoded straight
//!   from the store's stream, so its size does not matter.
//! - **decoded batches**: the delta the writer is applying (the head) keeps at most
//!   [`HEAD_QUEUE`] batches queued. The deltas after it decode ahead into the other half of the
//!   budget and wait when it is used up; whenever a delta becomes the head, its decoder stops
//!   waiting, so the writer never waits for a decoder that waits for the budget.
//! - per decoder in flight (at most `max_fetchers`): a 256 KiB read buffer, the inflater's
//!   window and the event being parsed.
//! - **whole plain deltas**: a gzipped delta read whole whose plain size is at most
//!   [`ONE_SHOT_LIMIT`] is inflated in one call into a buffer of that size and parsed where it
//!   lies (igzip in one call is about twice the streaming inflater on etcdbr's deltas,
//!   libdeflate about 1.5 times); at most [`ONE_SHOT_SLOTS`] deltas at a time (and never more than `max_fetchers`),
//!   the others stream as above, and a decoder never waits for a slot. These buffers come on
//!   top of the budget: `ONE_SHOT_SLOTS` × [`ONE_SHOT_LIMIT`] at most, kept for the feed's
//!   life.
//!
//! Every delta's stream ends with an explicit end marker: a decoder that stops without one (a
//! panic) is an error, never a silently shorter chain.

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};

use crate::bridge::ChannelReader;
use crate::compress;
use crate::compress::blocks;
use crate::delta::{BatchPool, DeltaDecoder, EventBatch};
use crate::error::Error;
use crate::name::{Compression, Snapshot};
use crate::restore::Progress;
use crate::store::Snapstore;

/// The default memory budget of a restore's deltas (compressed objects read ahead plus decoded
/// events waiting for the writer).
pub const DEFAULT_BUDGET: u64 = 64 << 20;

/// Batches the head delta may hold queued for the writer.
pub const HEAD_QUEUE: usize = 4;

/// The largest plain size of a gzipped delta inflated whole in one call (see the module docs).
pub const ONE_SHOT_LIMIT: usize = 16 << 20;

/// Deltas inflated whole at a time at most (and at most `max_fetchers`): one per fetcher at the
/// default six, so on a Local store every delta of etcdbr's size is. Their buffers are the
/// feed's memory beyond its budget (`ONE_SHOT_SLOTS` × [`ONE_SHOT_LIMIT`] at most).
pub const ONE_SHOT_SLOTS: usize = 6;

/// Plain bytes read from the decompressor at a time.
const READ_PIECE: usize = 256 << 10;

/// One item of a delta's channel.
enum Msg {
    /// Events, and the budget bytes they took (0 when decoded as the head).
    Batch(EventBatch, u64),
    /// The delta is complete and verified.
    End,
    /// The delta failed.
    Failed(Error),
}

/// The budget of decoded events of the deltas after the head.
struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
    limit: u64,
    /// The index of the delta the writer applies.
    head: AtomicUsize,
    /// The free buffers for deltas inflated whole (one per slot, kept for the next delta: a
    /// fresh one per delta would fault in and unmap its pages every time).
    one_shot: Mutex<Vec<Vec<u8>>>,
}

/// A buffer taken by [`Budget::try_one_shot`]: given back when dropped.
struct OneShot<'a> {
    buf: Vec<u8>,
    free: &'a Mutex<Vec<Vec<u8>>>,
}

impl Drop for OneShot<'_> {
    fn drop(&mut self) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(std::mem::take(&mut self.buf));
    }
}

impl Budget {
    /// Takes `n` bytes for delta `index`: waits while the budget is used up, unless (or until)
    /// `index` is the head. Returns what was taken (0 for the head).
    fn take(&self, index: usize, n: u64) -> u64 {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.head.load(Ordering::Acquire) == index {
                return 0;
            }
            if *used + n <= self.limit || *used == 0 {
                *used += n;
                return n;
            }
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A slot to inflate one delta whole, if one is free. Never waits: a decoder without one
    /// streams.
    fn try_one_shot(&self) -> Option<OneShot<'_>> {
        let buf = self.one_shot.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
        Some(OneShot { buf, free: &self.one_shot })
    }

    fn give_back(&self, n: u64) {
        if n > 0 {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            *used = used.saturating_sub(n);
        }
        self.freed.notify_all();
    }

    fn set_head(&self, index: usize) {
        self.head.store(index, Ordering::Release);
        // Under the lock, so a decoder between its check and its wait cannot miss it.
        let _used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        self.freed.notify_all();
    }
}

/// How the deltas are fetched: [`FeedOptions::new`].
/// Fields may be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FeedOptions {
    /// Deltas in flight at most (`--max-fetchers`).
    pub max_fetchers: usize,
    /// Memory budget in bytes (see the module docs).
    pub budget: u64,
}

impl FeedOptions {
    /// At most `max_fetchers` deltas in flight within `budget` bytes.
    pub fn new(max_fetchers: usize, budget: u64) -> FeedOptions {
        FeedOptions { max_fetchers, budget }
    }
}

/// The writer's side: the events of every delta, in chain order (an iterator of batches), and
/// the bytes fetched once done.
pub struct DeltaFeed {
    streams: mpsc::Receiver<(String, mpsc::Receiver<Msg>)>,
    current: Option<(String, mpsc::Receiver<Msg>)>,
    index: usize,
    budget: Arc<Budget>,
    driver: tokio::task::JoinHandle<u64>,
    done: bool,
}

impl std::fmt::Debug for DeltaFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaFeed").field("index", &self.index).finish_non_exhaustive()
    }
}

/// Starts fetching and decoding `deltas`, in this order. Must be called within a tokio runtime;
/// the feed is read from a blocking thread.
pub fn start(
    store: Arc<dyn Snapstore>,
    deltas: Vec<Snapshot>,
    opts: FeedOptions,
    progress: Arc<dyn Progress>,
) -> DeltaFeed {
    let fetchers = opts.max_fetchers.max(1);
    let half = (opts.budget / 2).max(1 << 20);
    let budget = Arc::new(Budget {
        used: Mutex::new(0),
        freed: Condvar::new(),
        limit: half,
        head: AtomicUsize::new(0),
        one_shot: Mutex::new(vec![Vec::new(); ONE_SHOT_SLOTS.min(fetchers)]),
    });
    let (streams_tx, streams) = mpsc::channel(fetchers);
    let driver_budget = budget.clone();
    // The writer drops each batch once applied; its buffers go back to the decoders.
    let pool = BatchPool::new();
    let driver = tokio::spawn(async move {
        // Compressed bytes read ahead, in KiB permits; fetchers in flight.
        let kib = (half >> 10).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        let compressed = Arc::new(Semaphore::new(kib as usize));
        let slots = Arc::new(Semaphore::new(fetchers));
        let mut fetched = 0u64;
        for (index, snap) in deltas.into_iter().enumerate() {
            let whole = snap.size <= half;
            let need = if whole { (snap.size.div_ceil(1024) as u32).clamp(1, kib) } else { kib };
            let (Ok(permit), Ok(slot)) =
                (compressed.clone().acquire_many_owned(need).await, slots.clone().acquire_owned().await)
            else {
                break;
            };
            let (tx, rx) = mpsc::channel(HEAD_QUEUE);
            if streams_tx.send((snap.key.clone(), rx)).await.is_err() {
                break; // the writer stopped
            }
            fetched += snap.size;
            let store = store.clone();
            let budget = driver_budget.clone();
            let progress = progress.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                let key = snap.key.clone();
                let result = fetch_and_decode(store, &snap, whole, index, budget, pool, tx.clone(), progress).await;
                drop(permit);
                drop(slot);
                let last = match result {
                    Ok(true) => Msg::End,
                    Ok(false) => return, // the writer hung up
                    Err(e) => Msg::Failed(e),
                };
                let _ = tx.send(last).await;
                let _ = key;
            });
        }
        fetched
    });
    DeltaFeed { streams, current: None, index: 0, budget, driver, done: false }
}

/// Fetches one delta and decodes it into its channel. `Ok(false)`: the writer hung up.
#[allow(clippy::too_many_arguments)]
async fn fetch_and_decode(
    store: Arc<dyn Snapstore>,
    snap: &Snapshot,
    whole: bool,
    index: usize,
    budget: Arc<Budget>,
    pool: BatchPool,
    tx: mpsc::Sender<Msg>,
    progress: Arc<dyn Progress>,
) -> Result<bool, Error> {
    let key = snap.key.clone();
    let compression = snap.name.compression;
    let local = if whole { read_local(store.local_path(&snap.key), snap.size).await } else { None };
    let source = match local {
        Some(raw) => Source::Whole(raw),
        None => {
            let mut stream = store.read(&snap.key, None).await?;
            if whole {
                let mut raw = Vec::with_capacity(snap.size as usize);
                while let Some(chunk) = stream.next().await {
                    raw.extend_from_slice(&chunk?);
                }
                Source::Whole(raw)
            } else {
                // Decoded straight from the store's stream: the chunks cross to the decoder's thread.
                let (chunk_tx, chunk_rx) = mpsc::channel::<Result<Bytes, Error>>(4);
                tokio::spawn(async move {
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk.map_err(Error::from);
                        let failed = chunk.is_err();
                        if chunk_tx.send(chunk).await.is_err() || failed {
                            break;
                        }
                    }
                });
                Source::Stream(ChannelReader::new(chunk_rx))
            }
        }
    };
    let name = snap.name.to_string();
    let decoded = tokio::task::spawn_blocking(move || match source {
        Source::Whole(raw) => match inflate_whole(&raw, compression, &budget) {
            Some(mut plain) => {
                drop(raw);
                decode(Plain::Whole(&mut plain.buf), &key, index, &budget, pool, &tx)
            }
            None => {
                let mut reader = compress::decoder(compression, io::Cursor::new(raw));
                decode(Plain::Read(&mut reader), &key, index, &budget, pool, &tx)
            }
        },
        Source::Stream(reader) => {
            decode(Plain::Read(&mut compress::decoder(compression, reader)), &key, index, &budget, pool, &tx)
        }
    })
    .await
    .map_err(|e| Error::task_failed("the delta decoder", e))??;
    match decoded {
        Some(events) => {
            progress.delta_applied(&name, events as usize);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// A delta of the Local store read whole from its file (`path`, from
/// [`Snapstore::local_path`]) straight into one buffer of its listed size: the store's stream
/// would zero-fill a buffer per chunk and copy the chunks once more. `None` when there is no such
/// path or the file cannot be read: the caller reads through the store, whose error names the
/// object.
async fn read_local(path: Option<std::path::PathBuf>, size: u64) -> Option<Vec<u8>> {
    let path = path?;
    let read = tokio::task::spawn_blocking(move || {
        let mut raw = Vec::with_capacity(size as usize);
        std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut raw)).map(|_| raw)
    });
    match read.await {
        Ok(Ok(raw)) => Some(raw),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "a delta's local file could not be read: read through the store");
            None
        }
        Err(_) => None,
    }
}

/// `raw` inflated in one call into a free whole-inflate buffer, when it is a gzip delta that can
/// be ([`blocks::inflate_single_member_into`]); `None` (no buffer free, or another shape): it
/// streams, and the buffer, if one was taken, is free again.
fn inflate_whole<'a>(raw: &[u8], compression: Compression, budget: &'a Budget) -> Option<OneShot<'a>> {
    if compression != Compression::Gzip {
        return None;
    }
    let mut one_shot = budget.try_one_shot()?;
    blocks::inflate_single_member_into(raw, ONE_SHOT_LIMIT, &mut one_shot.buf).then_some(one_shot)
}

/// A delta's compressed bytes, as the decoder gets them.
enum Source {
    /// Read whole from the store.
    Whole(Vec<u8>),
    /// Straight from the store's stream.
    Stream(ChannelReader),
}

/// A delta's plain bytes, as [`decode`] takes them.
enum Plain<'a> {
    /// All of them, in a whole-inflate buffer: the decoder parses them there and hands the
    /// buffer back at the end.
    Whole(&'a mut Vec<u8>),
    /// Read from a decompressor as they stream.
    Read(&'a mut dyn Read),
}

/// Decodes one delta's plain bytes from `plain` into `tx`. Returns its events, `None` if the writer hung
/// up.
fn decode(
    plain: Plain<'_>,
    key: &str,
    index: usize,
    budget: &Budget,
    pool: BatchPool,
    tx: &mpsc::Sender<Msg>,
) -> Result<Option<u64>, Error> {
    let mut decoder = DeltaDecoder::new(key).with_pool(pool);
    let mut kept = 0u64;
    let mut send = |batch: EventBatch| -> bool {
        if batch.is_empty() {
            return true;
        }
        kept += batch.len() as u64;
        let taken = budget.take(index, batch.memory() as u64);
        match tx.blocking_send(Msg::Batch(batch, taken)) {
            Ok(()) => true,
            Err(_) => {
                budget.give_back(taken);
                false
            }
        }
    };
    // Sends every batch the bytes fed so far complete; false once the writer hung up.
    let mut drain = |decoder: &mut DeltaDecoder| -> bool {
        while let Some(batch) = decoder.next_batch() {
            if !send(batch) {
                return false;
            }
        }
        true
    };
    let whole = match plain {
        Plain::Whole(buf) => {
            decoder.feed_whole(std::mem::take(buf));
            if !drain(&mut decoder) {
                return Ok(None);
            }
            Some(buf)
        }
        Plain::Read(reader) => loop {
            // Decompressed straight into the decoder's buffer.
            match decoder.read_from(reader, READ_PIECE) {
                Ok(0) => break None,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(crate::restore::read_error(key, e)),
            }
            if !drain(&mut decoder) {
                return Ok(None);
            }
        },
    };
    let (last, buf) = decoder.finish_returning();
    if let Some(whole) = whole {
        *whole = buf;
    }
    let last = last?;
    if !send(last) {
        return Ok(None);
    }
    Ok(Some(kept))
}

impl DeltaFeed {
    /// After the writer failed on the current delta: that delta's own error (damage found when
    /// its hash was checked), which explains the writer's better than the writer can.
    pub fn damage(&mut self) -> Option<Error> {
        let (_, rx) = self.current.as_mut()?;
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Batch(_, taken) => self.budget.give_back(taken),
                Msg::End => return None,
                Msg::Failed(e) => return Some(e),
            }
        }
        None
    }

    /// Stops the fetches (after the writer failed).
    pub fn abort(&self) {
        self.driver.abort();
    }

    /// The bytes fetched from the store, once every delta was read.
    pub async fn fetched(self) -> Result<u64, Error> {
        self.driver.await.map_err(|e| Error::task_failed("the delta fetcher", e))
    }
}

/// What the writer reads from a [`DeltaFeed`].
#[derive(Debug)]
pub enum Piece {
    /// The next delta begins: its index in the order given to [`start`] and its key.
    Begin(usize, String),
    /// Its next events.
    Batch(EventBatch),
    /// It is complete and its hash verified.
    End,
}

impl Iterator for DeltaFeed {
    type Item = Result<Piece, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some((key, rx)) = &mut self.current {
            let item = match rx.blocking_recv() {
                Some(Msg::Batch(batch, taken)) => {
                    // The writer holds one batch at a time: its memory leaves the budget here.
                    self.budget.give_back(taken);
                    return Some(Ok(Piece::Batch(batch)));
                }
                Some(Msg::End) => Ok(Piece::End),
                Some(Msg::Failed(e)) => Err(e),
                None => Err(Error::internal(format!("the decoder of {key} stopped before its end"))),
            };
            match item {
                Ok(end) => {
                    self.current = None;
                    self.index += 1;
                    self.budget.set_head(self.index);
                    return Some(Ok(end));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        match self.streams.blocking_recv() {
            Some((key, rx)) => {
                self.current = Some((key.clone(), rx));
                Some(Ok(Piece::Begin(self.index, key)))
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_delta_is_read_whole_and_anything_else_goes_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Incr-1-2-3.gz");
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        // The listed size is only the buffer's first capacity: the file is read to its end.
        for size in [content.len() as u64, 10, 0] {
            assert!(read_local(Some(path.clone()), size).await.as_deref() == Some(&content[..]), "size {size}");
        }
        assert_eq!(read_local(None, 10).await, None, "not a Local store");
        assert_eq!(read_local(Some(dir.path().join("gone")), 10).await, None, "no such file");
        assert_eq!(read_local(Some(dir.path().to_path_buf()), 10).await, None, "a directory");
    }
}
