//! The sync↔async bridge, written once: format code runs on blocking threads over `Read` and
//! `Write`, the store and etcd are async streams, and bounded tokio channels join them.
//!
//! - [`ChannelReader`]: a blocking thread reads, as a `Read`, the chunks an async task sends
//!   (a full snapshot's or a delta's bytes on their way to a decoder).
//! - [`ChannelWriter`]: a blocking thread writes, as a `Write`, chunks an async consumer
//!   receives ([`receiver_stream`] makes them the `ByteStream` an upload takes).
//!
//! Memory is the channel's bound times the chunk size. A side that goes away ends the other's
//! work: a dropped sender is the reader's end of input, a dropped receiver the writer's
//! `BrokenPipe` (the consumer reports its own error).

use std::io::{self, Read, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::store::{ByteStream, StoreError};

/// A blocking `Read` over the chunks an async task sends; an `Err` chunk is the read's error
/// (its kind kept inside the `io::Error`), a closed channel the end of input.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, Error>>,
    current: Bytes,
}

impl ChannelReader {
    /// Reads what is sent on `rx`.
    pub(crate) fn new(rx: mpsc::Receiver<Result<Bytes, Error>>) -> ChannelReader {
        ChannelReader { rx, current: Bytes::new() }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A blocking `Write` that sends what it is given to an async receiver in chunks of at least
/// `chunk` bytes (the last one may be shorter: [`flush`](Write::flush) sends what is held).
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, StoreError>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChannelWriter {
    /// Sends on `tx` in chunks of `chunk` bytes.
    pub(crate) fn new(tx: mpsc::Sender<Result<Bytes, StoreError>>, chunk: usize) -> ChannelWriter {
        ChannelWriter { tx, buf: Vec::new(), chunk }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.chunk {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped reading"))
    }
}

/// What is sent on `rx`, as the stream [`Snapstore::write`](crate::Snapstore::write) takes.
pub(crate) fn receiver_stream(mut rx: mpsc::Receiver<Result<Bytes, StoreError>>) -> ByteStream {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_cross_both_ways_unchanged_in_whole_chunks() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (tx, rx) = mpsc::channel(2);
        let sent = data.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx, 4096);
            for part in sent.chunks(1000) {
                w.write_all(part).unwrap();
            }
            w.flush().unwrap();
        });
        let chunks: Vec<Bytes> = receiver_stream(rx).map(|c| c.unwrap()).collect().await;
        writer.await.unwrap();
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c.len() >= 4096));
        assert_eq!(chunks.concat(), data);

        let (tx, rx) = mpsc::channel(2);
        let reader = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            ChannelReader::new(rx).read_to_end(&mut out).map(|_| out)
        });
        for c in chunks {
            tx.send(Ok(c)).await.unwrap();
        }
        tx.send(Err(Error::internal("cut"))).await.unwrap();
        let err = reader.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("cut"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_that_went_away_is_a_broken_pipe() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let err =
            tokio::task::spawn_blocking(move || ChannelWriter::new(tx, 1).write_all(b"x")).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
