//! The local-directory backend: objects are files under a root directory.
//!
//! Writes go to a temporary file, are fsync'ed and renamed into place (readers never see a
//! partial object). Create-only puts use `link(2)`, which fails if the name exists, so they are
//! atomic even across processes; `IfMatch` puts compare and rename under an exclusive `flock(2)`
//! on `<root>/.lock` (and a mutex within the process), so they are atomic across processes that
//! share the directory too. ETags are the hex CRC-32C and length of the content, kept with each
//! file in an extended attribute (`user.ringtail.etag`, set before the file gets its name), so a
//! HEAD or a LIST does not read the objects (a LIST of a slot's objects at start used to read all of
//! them); a file without the attribute has its content read. A LIST walks only the prefix's
//! directory. Multipart parts are files in `.multipart/<id>/`. Files are written with O_DIRECT
//! where the file system takes it (through an aligned bounce buffer, not the page cache).

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::{
    on_runtime, runtime, Condition, ObjectMeta, ObjectStore, Part, StoreError, StoreResult,
};

pub struct LocalDir {
    inner: Arc<Inner>,
    rt: tokio::runtime::Runtime,
}

struct Inner {
    root: PathBuf,
    write_lock: Mutex<()>,
    tmp_counter: AtomicU64,
}

impl LocalDir {
    pub fn open(root: &Path) -> StoreResult<LocalDir> {
        std::fs::create_dir_all(root.join(".multipart")).map_err(|e| io_error(root, e))?;
        Ok(LocalDir {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                write_lock: Mutex::new(()),
                tmp_counter: AtomicU64::new(0),
            }),
            rt: runtime("ringtail-objstore-local", 1)
                .map_err(|e| StoreError::Fatal(e.to_string()))?,
        })
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    ) -> BoxFuture<'static, StoreResult<T>> {
        let inner = self.inner.clone();
        let handle = self.rt.handle().clone();
        on_runtime(self.rt.handle(), async move {
            handle
                .spawn_blocking(move || f(&inner))
                .await
                .unwrap_or_else(|e| Err(StoreError::Fatal(e.to_string())))
        })
    }
}

impl Drop for LocalDir {
    fn drop(&mut self) {
        // Never block whoever drops the store (possibly an async task).
        let rt = std::mem::replace(
            &mut self.rt,
            runtime("ringtail-objstore-drop", 1).expect("runtime"),
        );
        rt.shutdown_background();
    }
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::NotFound(path.display().to_string()),
        _ => StoreError::Transient(format!("{}: {e}", path.display())),
    }
}

/// Alignment of O_DIRECT writes (offsets, lengths, buffer addresses): the largest logical
/// block size in common use.
const DIRECT_ALIGN: usize = 4096;

/// Bytes copied into the bounce buffer and written per O_DIRECT write.
const DIRECT_CHUNK: usize = 1 << 20;

/// A `DIRECT_CHUNK`-byte buffer aligned for O_DIRECT, one per writing thread.
struct Bounce(std::ptr::NonNull<u8>);

impl Bounce {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(DIRECT_CHUNK, DIRECT_ALIGN).expect("valid layout")
    }

    fn new() -> Bounce {
        // SAFETY: a non-zero size; zeroed, so every byte is initialised.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        Bounce(
            std::ptr::NonNull::new(ptr)
                .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout())),
        )
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: DIRECT_CHUNK initialised bytes, borrowed mutably through `self` only.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), DIRECT_CHUNK) }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.0.as_ptr(), Self::layout()) }
    }
}

thread_local! {
    static BOUNCE: std::cell::RefCell<Option<Bounce>> = const { std::cell::RefCell::new(None) };
}

/// Creates `path` holding `bytes`. With O_DIRECT where the file system takes it: the bytes go
/// to the disk from an aligned bounce buffer, a copy at memory speed, instead of through the
/// page cache — buffered writes of the embedded store were the broker's largest produce cost
/// (issue 23: 43 % of its CPU samples, in `copy_folio_from_iter_atomic`). Elsewhere (tmpfs)
/// buffered writes. Not synced.
fn write_file(path: &Path, pieces: &[Bytes]) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let f = match direct {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut f = std::fs::File::create(path)?;
            for p in pieces {
                f.write_all(p)?;
            }
            return Ok(f);
        }
        Err(e) => return Err(e),
    };
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    BOUNCE.with(|b| {
        let mut b = b.borrow_mut();
        let buf = b.get_or_insert_with(Bounce::new).bytes();
        // The pieces' bytes, a chunk at a time: `filled` of the buffer, written at `at`.
        let (mut at, mut filled) = (0u64, 0usize);
        for p in pieces {
            let mut rest: &[u8] = p;
            while !rest.is_empty() {
                let n = rest.len().min(DIRECT_CHUNK - filled);
                buf[filled..filled + n].copy_from_slice(&rest[..n]);
                (filled, rest) = (filled + n, &rest[n..]);
                if filled == DIRECT_CHUNK {
                    f.write_all_at(buf, at)?;
                    (at, filled) = (at + DIRECT_CHUNK as u64, 0);
                }
            }
        }
        if filled > 0 {
            let padded = filled.next_multiple_of(DIRECT_ALIGN);
            buf[filled..padded].fill(0);
            f.write_all_at(&buf[..padded], at)?;
        }
        std::io::Result::Ok(())
    })?;
    // The last block was written whole: the file ends where the bytes do.
    f.set_len(len as u64)?;
    Ok(f)
}

/// The ETag of the concatenation of `pieces`: the hex CRC-32C and length of the content.
fn etag<B: AsRef<[u8]>>(pieces: &[B]) -> String {
    let crc = pieces
        .iter()
        .fold(0, |crc, p| crc32c::crc32c_append(crc, p.as_ref()));
    let len: usize = pieces.iter().map(|p| p.as_ref().len()).sum();
    format!("{crc:08x}-{len:x}")
}

/// The extended attribute holding a file's ETag.
const ETAG_XATTR: &std::ffi::CStr = c"user.ringtail.etag";

/// Records `tag` with the open file (best effort: a file system without user attributes makes
/// readers compute it from the content).
fn set_etag_xattr(f: &std::fs::File, tag: &str) {
    use std::os::fd::AsRawFd;
    // SAFETY: a descriptor we own, a NUL-terminated name, a buffer of the length given.
    unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            ETAG_XATTR.as_ptr(),
            tag.as_ptr().cast(),
            tag.len(),
            0,
        );
    }
}

/// The ETag recorded with the file at `path`, if any.
fn etag_xattr(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            ETAG_XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    String::from_utf8(buf[..n as usize].to_vec()).ok()
}

fn valid_key(key: &str) -> StoreResult<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.starts_with(".multipart")
        || key == ".lock"
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(StoreError::Fatal(format!("invalid object key {key:?}")));
    }
    Ok(())
}

impl Inner {
    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        valid_key(key)?;
        Ok(self.root.join(key))
    }

    /// Writes the concatenation of `pieces` to a synced temporary file next to `path`; returns
    /// it and its ETag.
    fn write_tmp(&self, path: &Path, pieces: &[Bytes]) -> StoreResult<(PathBuf, String)> {
        let dir = path.parent().expect("keys have a parent");
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let f = write_file(&tmp, pieces).map_err(|e| io_error(&tmp, e))?;
        let tag = etag(pieces);
        set_etag_xattr(&f, &tag);
        f.sync_all().map_err(|e| io_error(&tmp, e))?;
        Ok((tmp, tag))
    }

    fn put(&self, key: &str, pieces: &[Bytes], condition: &Condition) -> StoreResult<String> {
        let path = self.path(key)?;
        let (tmp, tag) = self.write_tmp(&path, pieces)?;
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let _flock = match condition {
            Condition::IfMatch(_) => Some(self.lock_across_processes()?),
            _ => None,
        };
        let result = match condition {
            Condition::IfNoneMatch => match std::fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(StoreError::PreconditionFailed(key.to_string()))
                }
                Err(e) => Err(io_error(&path, e)),
            },
            Condition::IfMatch(expected) => match std::fs::read(&path) {
                Ok(current) if &etag(&[&current]) == expected => {
                    std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))
                }
                Ok(_) => Err(StoreError::PreconditionFailed(key.to_string())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(StoreError::PreconditionFailed(key.to_string()))
                }
                Err(e) => Err(io_error(&path, e)),
            },
            Condition::None => std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e)),
        };
        let _ = std::fs::remove_file(&tmp);
        result?;
        sync_dir(path.parent().expect("parent"))?;
        Ok(tag)
    }

    /// An exclusive `flock` on `<root>/.lock`, released when the file is dropped.
    fn lock_across_processes(&self) -> StoreResult<std::fs::File> {
        use std::os::fd::AsRawFd;
        let path = self.root.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        // SAFETY: flock on a descriptor we own; the lock goes with the file.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_error(&path, std::io::Error::last_os_error()));
        }
        Ok(f)
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path(key)?;
        let mut f =
            std::fs::File::open(&path).map_err(|_| StoreError::NotFound(key.to_string()))?;
        let size = f.metadata().map_err(|e| io_error(&path, e))?.len();
        let Some(r) = range else {
            let mut v = Vec::with_capacity(size as usize);
            f.read_to_end(&mut v).map_err(|e| io_error(&path, e))?;
            return Ok(Bytes::from(v));
        };
        if r.start > r.end || r.start >= size {
            return Err(StoreError::Fatal(format!(
                "range {r:?} outside {key:?} of {size} bytes"
            )));
        }
        let end = r.end.min(size);
        let mut v = vec![0u8; (end - r.start) as usize];
        f.seek(SeekFrom::Start(r.start))
            .and_then(|_| f.read_exact(&mut v))
            .map_err(|e| io_error(&path, e))?;
        Ok(Bytes::from(v))
    }

    fn meta(&self, key: &str) -> StoreResult<ObjectMeta> {
        let path = self.path(key)?;
        let size = std::fs::metadata(&path)
            .map_err(|_| StoreError::NotFound(key.to_string()))?
            .len();
        if let Some(etag) = etag_xattr(&path) {
            return Ok(ObjectMeta {
                key: key.to_string(),
                size,
                etag,
            });
        }
        let bytes = self.get(key, None)?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: bytes.len() as u64,
            etag: etag(&[&bytes]),
        })
    }

    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        // Only the directory the prefix names can hold its keys.
        let dir = match prefix.rsplit_once('/') {
            Some((dir, _)) => {
                valid_key(dir)?;
                self.root.join(dir)
            }
            None => self.root.clone(),
        };
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_error(&dir, e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(".tmp-") || name == ".multipart" || name == ".lock" {
                    continue;
                }
                let path = entry.path();
                if entry.file_type().map_err(|e| io_error(&path, e))?.is_dir() {
                    stack.push(path);
                    continue;
                }
                let key = path
                    .strip_prefix(&self.root)
                    .expect("under root")
                    .to_string_lossy()
                    .to_string();
                if key.starts_with(prefix) {
                    out.push(self.meta(&key)?);
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn upload_dir(&self, upload_id: &str) -> StoreResult<PathBuf> {
        if upload_id.is_empty()
            || !upload_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(StoreError::Fatal(format!(
                "invalid upload id {upload_id:?}"
            )));
        }
        Ok(self.root.join(".multipart").join(upload_id))
    }
}

fn sync_dir(dir: &Path) -> StoreResult<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

impl ObjectStore for LocalDir {
    fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        let key = key.to_string();
        self.blocking(move |s| s.put(&key, &[body], &condition))
    }

    fn put_pieces(
        &self,
        key: &str,
        pieces: Vec<Bytes>,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        let key = key.to_string();
        self.blocking(move |s| s.put(&key, &pieces, &condition))
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'static, StoreResult<Bytes>> {
        let key = key.to_string();
        self.blocking(move |s| s.get(&key, range))
    }

    fn head(&self, key: &str) -> BoxFuture<'static, StoreResult<ObjectMeta>> {
        let key = key.to_string();
        self.blocking(move |s| s.meta(&key))
    }

    fn list(&self, prefix: &str) -> BoxFuture<'static, StoreResult<Vec<ObjectMeta>>> {
        let prefix = prefix.to_string();
        self.blocking(move |s| s.list(&prefix))
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, StoreResult<()>> {
        let key = key.to_string();
        self.blocking(move |s| {
            let path = s.path(&key)?;
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(&path, e)),
            }
        })
    }

    fn create_multipart(&self, key: &str) -> BoxFuture<'static, StoreResult<String>> {
        let key = key.to_string();
        self.blocking(move |s| {
            s.path(&key)?;
            let id = format!(
                "{}-{}",
                std::process::id(),
                s.tmp_counter.fetch_add(1, Ordering::Relaxed)
            );
            let dir = s.upload_dir(&id)?;
            std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
            Ok(id)
        })
    }

    fn upload_part(
        &self,
        _key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> BoxFuture<'static, StoreResult<Part>> {
        let upload_id = upload_id.to_string();
        self.blocking(move |s| {
            let dir = s.upload_dir(&upload_id)?;
            if !dir.exists() {
                return Err(StoreError::NotFound(format!("upload {upload_id}")));
            }
            if !(1..=10_000).contains(&number) {
                return Err(StoreError::Fatal(format!(
                    "part number {number} outside 1..=10000"
                )));
            }
            let path = dir.join(format!("{number:05}"));
            let (tmp, etag) = s.write_tmp(&path, &[body])?;
            std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
            Ok(Part { number, etag })
        })
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> BoxFuture<'static, StoreResult<String>> {
        let (key, upload_id) = (key.to_string(), upload_id.to_string());
        self.blocking(move |s| {
            let dir = s.upload_dir(&upload_id)?;
            let mut whole = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 && part.number <= parts[i - 1].number {
                    return Err(StoreError::Fatal("parts must be in ascending order".into()));
                }
                let path = dir.join(format!("{:05}", part.number));
                let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
                if etag(&[&bytes]) != part.etag {
                    return Err(StoreError::Fatal(format!(
                        "part {} does not match its etag",
                        part.number
                    )));
                }
                whole.extend_from_slice(&bytes);
            }
            let tag = s.put(&key, &[whole.into()], &Condition::None)?;
            let _ = std::fs::remove_dir_all(&dir);
            Ok(tag)
        })
    }

    fn abort_multipart(&self, _key: &str, upload_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        let upload_id = upload_id.to_string();
        self.blocking(move |s| {
            let dir = s.upload_dir(&upload_id)?;
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any length goes through the aligned bounce buffer whole: padded to a block, truncated
    /// back; the file holds exactly the bytes (and buffered writes where O_DIRECT is refused).
    #[test]
    fn files_hold_exactly_their_bytes_at_any_length() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            4095,
            4096,
            4097,
            DIRECT_CHUNK,
            DIRECT_CHUNK + 5,
            3 * DIRECT_CHUNK - 1,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            // In pieces of every size around the chunk's.
            let pieces: Vec<Bytes> = bytes
                .chunks(len.div_ceil(3).max(1))
                .map(Bytes::copy_from_slice)
                .collect();
            let f = write_file(&path, &pieces).unwrap();
            f.sync_all().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "length {len}");
        }
        // A second write of the same name replaces it (a retried temporary file).
        let path = dir.path().join("again");
        write_file(&path, &[Bytes::from(vec![1u8; 9000])]).unwrap();
        write_file(&path, &[Bytes::from_static(b"short")]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
    }
}
