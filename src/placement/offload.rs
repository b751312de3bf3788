//! The offload folder: per-process session directories holding disk-tier
//! layers that cannot be read from the model file itself.
//!
//! Each running Spillway owns one `spillway-<pid>-<nanos>` directory with a
//! `lock` file it holds an exclusive lock on. The directory is removed when
//! the session is dropped (unload, exit). A process that dies cannot clean
//! up, but its lock dies with it, so the next start removes every session
//! directory whose lock can be taken. This module must never delete anything
//! that is not a session directory of Spillway's own.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const SESSION_PREFIX: &str = "spillway-";
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("offload folder {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "offload folder {path} has {free_bytes} bytes free but the disk layers need {needed_bytes}"
    )]
    NoSpace {
        path: PathBuf,
        needed_bytes: u64,
        free_bytes: u64,
    },
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> OffloadError + '_ {
    move |source| OffloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes session directories left by processes that are no longer running.
/// Returns how many were removed.
pub fn clean_stale(root: &Path) -> Result<usize, OffloadError> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_at(root)(e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_session = name.to_string_lossy().starts_with(SESSION_PREFIX)
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_session {
            continue;
        }
        let dir = entry.path();
        let stale = match File::open(dir.join(LOCK_FILE)) {
            Ok(lock) => match lock.try_lock() {
                Ok(()) => true,
                Err(TryLockError::WouldBlock) => false,
                Err(TryLockError::Error(_)) => false,
            },
            // A session that died between creating its folder and its lock.
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        if stale && fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// This process's directory in the offload folder; removed on drop.
#[derive(Debug)]
pub struct OffloadSession {
    dir: PathBuf,
    _lock: File,
}

impl OffloadSession {
    /// Cleans stale sessions under `root`, then creates and locks a new one.
    pub fn create(root: &Path) -> Result<Self, OffloadError> {
        fs::create_dir_all(root).map_err(io_at(root))?;
        clean_stale(root)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = root.join(format!("{SESSION_PREFIX}{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).map_err(io_at(&dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        lock.lock().map_err(io_at(&lock_path))?;
        Ok(OffloadSession { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a file in the session, open for reading and writing.
    pub fn create_file(&self, name: &str) -> Result<(File, PathBuf), OffloadError> {
        let path = self.dir.join(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        Ok((f, path))
    }

    /// Bytes used by the session's files.
    pub fn bytes_used(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|es| {
                es.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for OffloadSession {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Writes all of `bytes` or reports the error, naming the file. A full disk
/// surfaces here as `StorageFull`/`WriteZero`.
pub fn write_all_at_end(file: &mut File, path: &Path, bytes: &[u8]) -> Result<(), OffloadError> {
    file.write_all(bytes).map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_removed_on_drop_and_live_sessions_survive_cleaning() {
        let root = tempfile::tempdir().unwrap();
        let s = OffloadSession::create(root.path()).unwrap();
        let (mut f, p) = s.create_file("layer-0.bin").unwrap();
        write_all_at_end(&mut f, &p, b"abc").unwrap();
        assert_eq!(s.bytes_used(), 3);
        // A live session is not stale: its lock is held.
        assert_eq!(clean_stale(root.path()).unwrap(), 0);
        assert!(s.dir().exists());
        let dir = s.dir().to_path_buf();
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn stale_sessions_are_cleaned_and_other_files_kept() {
        let root = tempfile::tempdir().unwrap();
        // A crashed session: folder and lock file, nobody holding the lock.
        let dead = root.path().join("spillway-999999-1");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        fs::write(dead.join("layer-3.bin"), vec![0u8; 1000]).unwrap();
        // A session that died before making its lock.
        let early = root.path().join("spillway-999998-1");
        fs::create_dir(&early).unwrap();
        // Not ours.
        fs::write(root.path().join("notes.txt"), b"keep me").unwrap();
        fs::create_dir(root.path().join("other")).unwrap();
        let s = OffloadSession::create(root.path()).unwrap();
        assert!(!dead.exists());
        assert!(!early.exists());
        assert!(root.path().join("notes.txt").exists());
        assert!(root.path().join("other").exists());
        assert!(s.dir().exists());
    }
}
