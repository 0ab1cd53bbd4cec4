//! Client-side encryption of backups: [`EncryptedStore`] wraps any [`Snapstore`] so that the
//! store only ever holds ciphertext.
//!
//! # Format: age
//!
//! Objects are encrypted in [age](https://age-encryption.org/v1)'s format to X25519 recipients,
//! with the `age` crate. The choice, and why:
//! - an operator can decrypt an object by hand in an emergency with a packaged tool
//!   (`age -d -i key.txt Full-….gz.age | gunzip > db`; Debian's `age`, or `rage`);
//! - the payload is ChaCha20-Poly1305 in authenticated 64 KiB chunks with a last-chunk flag, so
//!   it streams in both directions with memory that does not grow with the object, and a
//!   flipped, dropped or truncated chunk is refused rather than returned;
//! - a file key per object is wrapped once per recipient in the header's recipient stanzas; a
//!   reader unwraps the stanza with each of its identities (a few scalar multiplications), never
//!   trial-decrypts the payload.
//!
//! # Names
//!
//! Encryption wraps the stored bytes after compression (on write) and before decompression (on
//! read). An encrypted object is stored under its name plus [`ENCRYPTED_SUFFIX`]
//! (`Full-00000000-00000166-1795607409.gz.age`, `….gz.final.age`). [`EncryptedStore`] lists it
//! without the suffix, so every command above it (names, chains, GC, copy) sees the layout's
//! names and revisions as before; errors name the stored key. A store may hold plain objects
//! (taken before encryption was turned on) beside encrypted ones: both are read.
//!
//! # Keys
//!
//! A key file is age's identity file: `AGE-SECRET-KEY-1…` lines, `#` comments (`age-keygen`
//! writes one). The **first** identity writes (objects are encrypted to its public key); **every**
//! identity reads. To rotate, put the new key first and keep the old ones below it: new backups
//! use the new key and the old ones still restore.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use age::secrecy::ExposeSecret;
use age::x25519;
use async_trait::async_trait;
use bytes::Bytes;
use futures::{AsyncReadExt, StreamExt, TryStreamExt};

use crate::store::{ByteStream, ObjectMeta, Snapstore, StoreError, WriteOptions};

/// The suffix of an encrypted object, after the compression's (and `.final`).
pub const ENCRYPTED_SUFFIX: &str = ".age";

/// Plaintext bytes handed on per chunk of a decrypted stream.
const READ_CHUNK: usize = 256 << 10;

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file cannot be read.
    #[error("cannot read the encryption key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A line is not an age X25519 identity (the line's content is never printed: it may be a key).
    #[error(
        "the encryption key file {path}: line {line} is not an age X25519 identity (AGE-SECRET-KEY-1…); \
         create one with `age-keygen -o FILE`"
    )]
    Malformed {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
    },
    /// The file holds no identity.
    #[error(
        "the encryption key file {path} holds no identity (AGE-SECRET-KEY-1… line); create one with `age-keygen -o FILE`"
    )]
    Empty {
        /// The file.
        path: String,
    },
}

/// The keys of an encrypted store: the first identity writes, all of them read.
#[derive(Clone)]
pub struct Keys {
    identities: Vec<x25519::Identity>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys only: secrets never reach logs or `Debug`.
        f.debug_struct("Keys").field("recipients", &self.recipients()).finish()
    }
}

impl Keys {
    /// Reads an age identity file (see the module docs).
    pub fn from_file(path: &Path) -> Result<Keys, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: shown.clone(), source })?;
        Keys::parse(&text, &shown)
    }

    /// Parses the text of an age identity file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Keys, KeyError> {
        let mut identities = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = x25519::Identity::from_str(line)
                .map_err(|_| KeyError::Malformed { path: origin.to_string(), line: i + 1 })?;
            identities.push(id);
        }
        if identities.is_empty() {
            return Err(KeyError::Empty { path: origin.to_string() });
        }
        Ok(Keys { identities })
    }

    /// A new random key (tests, and `age-keygen`'s job otherwise).
    pub fn generate() -> Keys {
        Keys { identities: vec![x25519::Identity::generate()] }
    }

    /// The key file's text for these keys, as `age-keygen` writes it.
    pub fn to_file_text(&self) -> String {
        let mut out = String::new();
        for id in &self.identities {
            out.push_str(&format!("# public key: {}\n{}\n", id.to_public(), id.to_string().expose_secret()));
        }
        out
    }

    /// Adds `other`'s identities as further read keys (after these, so the write key stays).
    pub fn add_read_keys(&mut self, other: &Keys) {
        for id in &other.identities {
            if !self.identities.iter().any(|mine| mine.to_public().to_string() == id.to_public().to_string()) {
                self.identities.push(id.clone());
            }
        }
    }

    /// The public keys (`age1…`), the writing one first.
    pub fn recipients(&self) -> Vec<String> {
        self.identities.iter().map(|i| i.to_public().to_string()).collect()
    }

    /// The public key objects are encrypted to (`age1…`).
    pub fn write_recipient(&self) -> String {
        self.identities[0].to_public().to_string()
    }

    fn encryptor(&self) -> Result<age::Encryptor, age::EncryptError> {
        let recipient = self.identities[0].to_public();
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
    }
}

/// A [`Snapstore`] that encrypts what it writes and decrypts what it reads (see the module docs).
///
/// Without keys it still lists encrypted objects (under their layout names), so that a restore
/// or `status` without a key says which object needs one instead of silently choosing older
/// plain backups; reading one is then [`StoreError::Decrypt`].
#[derive(Debug)]
pub struct EncryptedStore {
    inner: Arc<dyn Snapstore>,
    keys: Option<Arc<Keys>>,
}

impl EncryptedStore {
    /// Wraps `inner`; `keys` `None` writes plain objects and refuses to read encrypted ones.
    pub fn new(inner: Arc<dyn Snapstore>, keys: Option<Keys>) -> EncryptedStore {
        EncryptedStore { inner, keys: keys.map(Arc::new) }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Snapstore> {
        &self.inner
    }

    fn sealed(key: &str) -> String {
        format!("{key}{ENCRYPTED_SUFFIX}")
    }

    async fn decrypt(&self, stored: String, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        let Some(keys) = self.keys.clone() else {
            return Err(StoreError::Decrypt {
                key: stored,
                why: "the object is encrypted and no key was given; pass --encryption-key-file (or \
                      ETCDBR_ENCRYPTION_KEY_FILE) with the identity it was encrypted to"
                    .into(),
            });
        };
        let raw = self.inner.read(&stored, None).await?;
        decrypt_stream(raw, stored, keys, range).await
    }
}

/// Decrypts `raw` (the stored object `stored`) with `keys`, yielding the plaintext (or its
/// `range`). The header is read and the key found before this returns.
async fn decrypt_stream(
    raw: ByteStream,
    stored: String,
    keys: Arc<Keys>,
    range: Option<Range<u64>>,
) -> Result<ByteStream, StoreError> {
    let reader = raw.map_err(io::Error::other).into_async_read();
    let decryptor = match age::Decryptor::new_async_buffered(reader).await {
        Ok(d) => d,
        Err(e) => return Err(decrypt_error(&stored, &keys, e)),
    };
    let identities = keys.identities.iter().map(|i| i as &dyn age::Identity);
    let plain = decryptor.decrypt_async(identities).map_err(|e| decrypt_error(&stored, &keys, e))?;
    let (skip, left) = match &range {
        Some(r) => (r.start, r.end.saturating_sub(r.start)),
        None => (0, u64::MAX),
    };
    let state = (plain, stored, skip, left, vec![0u8; READ_CHUNK]);
    let stream = futures::stream::try_unfold(state, |(mut plain, stored, mut skip, mut left, mut buf)| async move {
        loop {
            if left == 0 {
                return Ok(None);
            }
            let n = match plain.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => return Err(payload_error(&stored, e)),
            };
            if n == 0 {
                return Ok(None);
            }
            let mut piece = &buf[..n];
            if skip > 0 {
                let cut = skip.min(n as u64) as usize;
                skip -= cut as u64;
                piece = &piece[cut..];
                if piece.is_empty() {
                    continue;
                }
            }
            let take = (piece.len() as u64).min(left) as usize;
            left -= take as u64;
            let out = Bytes::copy_from_slice(&piece[..take]);
            return Ok(Some((out, (plain, stored, skip, left, buf))));
        }
    });
    Ok(Box::pin(stream))
}

/// The store's own error carried through the decrypting reader, or the payload's damage.
fn payload_error(stored: &str, e: io::Error) -> StoreError {
    if e.get_ref().is_some_and(|inner| inner.is::<StoreError>()) {
        if let Some(Ok(store)) = e.into_inner().map(|inner| inner.downcast::<StoreError>()) {
            return *store;
        }
        unreachable!("checked above");
    }
    StoreError::Corrupt {
        key: stored.to_string(),
        why: format!("its encrypted payload does not authenticate ({e}): the object is damaged or truncated"),
    }
}

fn decrypt_error(stored: &str, keys: &Keys, e: age::DecryptError) -> StoreError {
    match e {
        age::DecryptError::NoMatchingKeys => StoreError::Decrypt {
            key: stored.to_string(),
            why: format!(
                "none of the keys in --encryption-key-file fits it (their public keys: {}); give the \
                 identity it was encrypted to (an old key stays in the file, below the new one, after a rotation)",
                keys.recipients().join(", ")
            ),
        },
        age::DecryptError::Io(io) => payload_error(stored, io),
        other => StoreError::Corrupt {
            key: stored.to_string(),
            why: format!("its age header is not valid ({other}): the object is damaged, or not an age file"),
        },
    }
}

/// `data` encrypted to `keys`' write key, as a stream: each input chunk is encrypted as it
/// arrives (age's writer holds at most one 64 KiB chunk back).
fn encrypt_stream(data: ByteStream, keys: &Keys, key: &str) -> Result<ByteStream, StoreError> {
    let fail = |e: String| StoreError::Other { key: key.to_string(), retryable: false, source: e.into() };
    let sink = SharedSink::default();
    let encryptor = keys.encryptor().map_err(|e| fail(format!("cannot encrypt: {e}")))?;
    let writer = encryptor.wrap_output(sink.clone()).map_err(|e| fail(format!("cannot encrypt: {e}")))?;
    let state = (data, Some(writer), sink, key.to_string());
    let stream = futures::stream::try_unfold(state, |(mut data, mut writer, sink, stored)| async move {
        loop {
            let Some(w) = writer.as_mut() else { return Ok(None) };
            match data.next().await {
                Some(chunk) => {
                    io::Write::write_all(w, &chunk?).map_err(|e| encrypt_io(&stored, e))?;
                }
                None => {
                    writer.take().expect("present").finish().map_err(|e| encrypt_io(&stored, e))?;
                }
            }
            let out = sink.take();
            if !out.is_empty() {
                return Ok(Some((Bytes::from(out), (data, writer, sink, stored))));
            }
        }
    });
    Ok(Box::pin(stream))
}

fn encrypt_io(stored: &str, e: io::Error) -> StoreError {
    StoreError::Other { key: stored.to_string(), retryable: false, source: Box::new(e) }
}

/// The writer age's encryptor writes into; the stream takes what it wrote after each chunk.
#[derive(Clone, Default)]
struct SharedSink(Arc<Mutex<Vec<u8>>>);

impl SharedSink {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl io::Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Snapstore for EncryptedStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out: Vec<ObjectMeta> = self
            .inner
            .list(prefix)
            .await?
            .into_iter()
            .map(|m| match m.key.strip_suffix(ENCRYPTED_SUFFIX) {
                Some(plain) => ObjectMeta { key: plain.to_string(), size: m.size },
                None => m,
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        // An object stored both ways (a crash between two tools' writes): the encrypted one was
        // listed first by the inner store's order only by chance, so keep either; both hold
        // the same snapshot.
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        let sealed = Self::sealed(key);
        if self.keys.is_some() {
            match self.decrypt(sealed, range.clone()).await {
                Err(StoreError::NotFound { .. }) => self.inner.read(key, range).await,
                other => other,
            }
        } else {
            match self.inner.read(key, range).await {
                Err(StoreError::NotFound { .. }) => {
                    if self.inner.list(&sealed).await?.iter().any(|m| m.key == sealed) {
                        self.decrypt(sealed, None).await
                    } else {
                        Err(StoreError::NotFound { key: key.to_string() })
                    }
                }
                other => other,
            }
        }
    }

    async fn write(&self, key: &str, data: ByteStream, opts: &WriteOptions) -> Result<u64, StoreError> {
        match &self.keys {
            Some(keys) => {
                let sealed = Self::sealed(key);
                let stream = encrypt_stream(data, keys, &sealed)?;
                self.inner.write(&sealed, stream, opts).await
            }
            None => self.inner.write(key, data, opts).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(&Self::sealed(key)).await?;
        self.inner.delete(key).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        match self.inner.rename(&Self::sealed(from), &Self::sealed(to)).await {
            Err(StoreError::NotFound { .. }) => self.inner.rename(from, to).await,
            other => other,
        }
    }

    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        // An encrypted object cannot be read in place.
        match self.inner.local_path(&Self::sealed(key)) {
            Some(_) => None,
            None => self.inner.local_path(key),
        }
    }

    fn ranged_reads(&self) -> bool {
        // A range of an encrypted object is decrypted from its start: read it once, whole.
        self.keys.is_none() && self.inner.ranged_reads()
    }

    fn describe(&self) -> String {
        match &self.keys {
            Some(keys) => format!("{} (encrypted to {})", self.inner.describe(), keys.write_recipient()),
            None => self.inner.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemoryStore;
    use crate::store::SnapstoreExt;

    fn chunks(data: &[u8], size: usize) -> ByteStream {
        let parts: Vec<Result<Bytes, StoreError>> = data.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Box::pin(futures::stream::iter(parts))
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn round_trip_stores_only_ciphertext_under_the_suffixed_name() {
        let inner: Arc<dyn Snapstore> = Arc::new(InMemoryStore::new());
        let store = EncryptedStore::new(inner.clone(), Some(Keys::generate()));
        // Sizes around age's 64 KiB chunk boundary, and empty.
        for len in [0usize, 1, 65535, 65536, 65537, 3 * 65536 + 5, 1 << 20] {
            let key = format!("p/v2/Full-00000000-{len:08}-1700000000.gz");
            let data = sample(len);
            store.write(&key, chunks(&data, 10_000), &WriteOptions::default()).await.unwrap();
            assert_eq!(store.read_to_bytes(&key).await.unwrap(), data, "len {len}");
            let stored = inner.read_to_bytes(&format!("{key}.age")).await.unwrap();
            assert!(stored.starts_with(b"age-encryption.org/v1\n"));
            if len >= 64 {
                assert!(!stored.windows(64).any(|w| w == &data[..64]), "plaintext in the stored object");
            }
            assert!(matches!(inner.read(&key, None).await.map(|_| ()), Err(StoreError::NotFound { .. })));
            // Ranges are of the plaintext.
            if len > 100 {
                let r = store.read_range_to_bytes(&key, Some(50..len as u64 - 3)).await.unwrap();
                assert_eq!(r, &data[50..len - 3]);
            }
        }
        let listed = store.list("p/v2/").await.unwrap();
        assert_eq!(listed.len(), 7);
        assert!(listed.iter().all(|m| m.key.ends_with(".gz")), "{listed:?}");
        let snaps = store.list_snapshots("p").await.unwrap();
        assert_eq!(snaps.last().unwrap().name.last_revision, 1 << 20);
    }

    #[tokio::test]
    async fn rotation_wrong_key_missing_key_and_damage() {
        let inner: Arc<dyn Snapstore> = Arc::new(InMemoryStore::new());
        let old = Keys::generate();
        let new = Keys::generate();
        let data = sample(200_000);
        EncryptedStore::new(inner.clone(), Some(old.clone())).write_bytes("k/old", data.clone().into()).await.unwrap();
        let mut rotated = new.clone();
        rotated.add_read_keys(&old);
        assert_eq!(rotated.write_recipient(), new.write_recipient());
        let store = EncryptedStore::new(inner.clone(), Some(rotated));
        store.write_bytes("k/new", data.clone().into()).await.unwrap();
        assert_eq!(store.read_to_bytes("k/old").await.unwrap(), data);
        assert_eq!(store.read_to_bytes("k/new").await.unwrap(), data);

        // Only the new key: the old object is refused, naming it, with the key's public half.
        let only_new = EncryptedStore::new(inner.clone(), Some(new.clone()));
        let err = only_new.read("k/old", None).await.map(|_| ()).unwrap_err();
        assert!(matches!(&err, StoreError::Decrypt { key, .. } if key == "k/old.age"), "{err}");
        assert!(err.to_string().contains(&new.write_recipient()), "{err}");
        assert!(!err.to_string().contains("AGE-SECRET-KEY"), "{err}");

        // No key at all: listed under its name, reading says a key is needed.
        let none = EncryptedStore::new(inner.clone(), None);
        assert!(none.list("k/").await.unwrap().iter().any(|m| m.key == "k/old"));
        let err = none.read("k/old", None).await.map(|_| ()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Decrypt { .. }) && err.to_string().contains("--encryption-key-file"),
            "{err}"
        );

        // A flipped byte in the payload: refused as damaged, not returned.
        let mut raw = inner.read_to_bytes("k/new.age").await.unwrap().to_vec();
        let at = raw.len() - 70_000;
        raw[at] ^= 1;
        inner.write_bytes("k/new.age", raw.clone().into()).await.unwrap();
        let err = store.read_to_bytes("k/new").await.unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "k/new.age"), "{err}");
        // Truncated at a chunk boundary: the last-chunk flag catches it.
        let header_and_some = raw[..raw.len() - 30_000].to_vec();
        inner.write_bytes("k/new.age", header_and_some.into()).await.unwrap();
        let err = store.read_to_bytes("k/new").await.unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { .. }), "{err}");
        // A damaged header.
        raw[5] ^= 0x20;
        inner.write_bytes("k/new.age", raw.into()).await.unwrap();
        let err = store.read("k/new", None).await.map(|_| ()).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { .. }), "{err}");
    }

    #[tokio::test]
    async fn plain_objects_still_read_rename_and_delete_both_forms() {
        let inner: Arc<dyn Snapstore> = Arc::new(InMemoryStore::new());
        inner.write_bytes("p/v2/Incr-00000002-00000003-1700000000.gz", "plain".into()).await.unwrap();
        let store = EncryptedStore::new(inner.clone(), Some(Keys::generate()));
        assert_eq!(store.read_to_bytes("p/v2/Incr-00000002-00000003-1700000000.gz").await.unwrap(), "plain");
        store.write_bytes("p/.staging/x", "sealed".into()).await.unwrap();
        store.rename("p/.staging/x", "p/v2/Full-00000000-00000004-1700000001.gz").await.unwrap();
        assert!(inner.list("p/.staging/").await.unwrap().is_empty());
        assert_eq!(store.read_to_bytes("p/v2/Full-00000000-00000004-1700000001.gz").await.unwrap(), "sealed");
        store.delete("p/v2/Full-00000000-00000004-1700000001.gz").await.unwrap();
        store.delete("p/v2/Incr-00000002-00000003-1700000000.gz").await.unwrap();
        assert!(inner.list("p/").await.unwrap().is_empty());
        assert!(!store.ranged_reads());
    }

    #[test]
    fn key_files() {
        let keys = Keys::generate();
        let text = keys.to_file_text();
        let parsed = Keys::parse(&format!("# created: now\n\n{text}"), "f").unwrap();
        assert_eq!(parsed.recipients(), keys.recipients());
        assert!(!format!("{parsed:?}").contains("AGE-SECRET-KEY"));
        let err = Keys::parse("# c\nAGE-SECRET-KEY-1NOTAKEY\n", "f").unwrap_err();
        assert!(matches!(err, KeyError::Malformed { line: 2, .. }), "{err}");
        assert!(!err.to_string().contains("NOTAKEY"));
        assert!(matches!(Keys::parse("# only a comment\n", "f"), Err(KeyError::Empty { .. })));
    }
}
