//! Models from the Hugging Face Hub (hf-hub): the files a model needs,
//! into the standard Hugging Face cache (so what Python tools downloaded is
//! found, and what Spillway downloads they find), with progress, resume of
//! an interrupted file, size and SHA-256 checks, tokens for gated repos and
//! offline mode.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// A model on the Hub: `owner/name`, a revision, and for GGUF repositories
/// the one file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub id: String,
    pub revision: String,
    pub file: Option<String>,
}

impl RepoRef {
    /// Parses `owner/name`, `owner/name@revision`, with `:file.gguf` after
    /// either. `None` when `s` does not look like a repo id (a path that
    /// exists is never one).
    pub fn parse(s: &str) -> Option<Self> {
        if Path::new(s).exists() || s.starts_with(['.', '/', '~']) || s.contains('\\') {
            return None;
        }
        let (rest, file) = match s.split_once(':') {
            Some((r, f)) if !f.is_empty() => (r, Some(f.to_string())),
            Some(_) => return None,
            None => (s, None),
        };
        let (id, revision) = match rest.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev.to_string()),
            Some(_) => return None,
            None => (rest, "main".to_string()),
        };
        let mut parts = id.split('/');
        let (owner, name) = (parts.next()?, parts.next()?);
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if parts.next().is_some() || !ok(owner) || !ok(name) {
            return None;
        }
        Some(RepoRef {
            id: id.to_string(),
            revision,
            file,
        })
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.id.clone(), RepoType::Model, self.revision.clone())
    }
}

/// Progress of one file.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadProgress {
    pub file: String,
    /// Which file of how many.
    pub index: usize,
    pub files: usize,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub bytes_per_sec: f64,
    pub eta_secs: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{repo} is gated or private: the Hub refused it without a valid token. Accept its license on huggingface.co, then set HF_TOKEN or run `huggingface-cli login` (the token file {token_file})")]
    Gated { repo: String, token_file: PathBuf },
    #[error("{repo} (revision {revision}) was not found on the Hub")]
    NotFound { repo: String, revision: String },
    #[error("offline (HF_HUB_OFFLINE is set) and {what} of {repo} is not in the Hugging Face cache {cache}; download it once while online")]
    Offline {
        repo: String,
        what: String,
        cache: PathBuf,
    },
    #[error("{file} of {repo}: {message}; the bad copy was removed, try again")]
    Corrupt {
        repo: String,
        file: String,
        message: String,
    },
    #[error("downloading {repo} needs {needed} MiB but {free} MiB are free under {dir}", needed = .needed >> 20, free = .free >> 20)]
    DiskFull {
        repo: String,
        dir: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("{0}")]
    Choose(String),
    #[error("download cancelled")]
    Cancelled,
    #[error("downloading {file} of {repo} failed: {message}")]
    Failed {
        repo: String,
        file: String,
        message: String,
    },
}

/// Where and how to download.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The Hub's address (tests: a local server); default `HF_ENDPOINT`,
    /// else huggingface.co.
    pub endpoint: Option<String>,
    /// The Hugging Face cache; default `HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Default `HF_TOKEN`, else the cache's token file.
    pub token: Option<String>,
    /// Default: `HF_HUB_OFFLINE` set to 1/true/yes.
    pub offline: Option<bool>,
    /// Attempts per file after a dropped connection (resumed each time).
    pub retries: usize,
}

fn env_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

impl HubOptions {
    fn cache(&self) -> Cache {
        match &self.cache_dir {
            Some(d) => Cache::new(d.clone()),
            None => Cache::from_env(),
        }
    }

    /// The Hub's address when one is set (`endpoint`, else `HF_ENDPOINT`).
    fn endpoint(&self) -> Option<String> {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty())
            .map(|e| e.trim_end_matches('/').to_string())
    }

    /// Whether the Hub is not to be contacted (`offline`, else
    /// `HF_HUB_OFFLINE`).
    pub fn is_offline(&self) -> bool {
        self.offline.unwrap_or_else(env_offline)
    }

    /// The Hub's address and the token a request carries (the same
    /// resolution downloads use).
    pub fn endpoint_and_token(&self) -> (String, Option<String>) {
        (
            self.endpoint()
                .unwrap_or_else(|| "https://huggingface.co".into()),
            self.token(&self.cache()),
        )
    }

    /// The Hugging Face cache folder.
    pub fn cache_path(&self) -> PathBuf {
        self.cache().path().clone()
    }

    fn token(&self, cache: &Cache) -> Option<String> {
        self.token
            .clone()
            .or_else(|| std::env::var("HF_TOKEN").ok())
            .filter(|t| !t.trim().is_empty())
            .or_else(|| cache.token())
            .map(|t| t.trim().to_string())
    }
}

/// One file of the repository, as the Hub lists it.
#[derive(Debug, Clone)]
struct Sibling {
    name: String,
    size: Option<u64>,
    sha256: Option<String>,
}

/// The files a model needs from a listing: JSON configs and tokenizer files
/// at the top level and safetensors weights, or the one GGUF.
fn wanted(repo: &RepoRef, names: &[String]) -> Result<Vec<String>, DownloadError> {
    if let Some(f) = &repo.file {
        if !names.iter().any(|n| n == f) {
            return Err(DownloadError::Choose(format!(
                "{} has no file {f}",
                repo.id
            )));
        }
        return Ok(vec![f.clone()]);
    }
    let top = |n: &&String| !n.contains('/');
    let safetensors: Vec<String> = names
        .iter()
        .filter(top)
        .filter(|n| n.ends_with(".safetensors"))
        .cloned()
        .collect();
    if !safetensors.is_empty() {
        let mut out: Vec<String> = names
            .iter()
            .filter(top)
            .filter(|n| n.ends_with(".json") || *n == "tokenizer.model")
            .cloned()
            .collect();
        out.extend(safetensors);
        return Ok(out);
    }
    let ggufs: Vec<&String> = names.iter().filter(|n| n.ends_with(".gguf")).collect();
    match ggufs.as_slice() {
        [one] => Ok(vec![(*one).clone()]),
        [] => Err(DownloadError::Choose(format!(
            "{} has neither safetensors weights nor a GGUF file",
            repo.id
        ))),
        many => Err(DownloadError::Choose(format!(
            "{} has {} GGUF files; name one as {}:FILE ({})",
            repo.id,
            many.len(),
            repo.id,
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Downloads what `repo` needs (files already in the cache are kept) and
/// returns the local path: the snapshot folder, or the GGUF file.
/// `progress` is called a few times a second; returning false cancels.
pub fn download(
    repo: &RepoRef,
    opts: &HubOptions,
    progress: &mut dyn FnMut(&DownloadProgress) -> bool,
) -> Result<PathBuf, DownloadError> {
    let cache = opts.cache();
    if opts.is_offline() {
        return from_cache(repo, &cache);
    }
    let token = opts.token(&cache);
    let mut builder = ApiBuilder::from_cache(cache.clone())
        .with_progress(false)
        .with_token(token)
        .with_retries(opts.retries);
    if let Some(e) = opts.endpoint() {
        builder = builder.with_endpoint(e);
    }
    let api = builder.build().map_err(|e| failed(repo, "", e))?;
    let api_repo = api.repo(repo.repo());
    // The listing, with sizes and LFS checksums.
    let info: Json = match api_repo.info_request().query("blobs", "true").call() {
        Ok(r) => r.into_json().map_err(|e| failed(repo, "", e))?,
        Err(e) => return Err(http_error(repo, &cache, "", &e)),
    };
    let siblings: Vec<Sibling> = info
        .get("siblings")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some(Sibling {
                        name: s.get("rfilename")?.as_str()?.to_string(),
                        size: s.get("size").and_then(Json::as_u64),
                        sha256: s
                            .get("lfs")
                            .and_then(|l| l.get("sha256"))
                            .and_then(Json::as_str)
                            .map(str::to_string),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<String> = siblings.iter().map(|s| s.name.clone()).collect();
    let files = wanted(repo, &names)?;
    let cache_repo = cache.repo(repo.repo());
    let missing: Vec<&Sibling> = files
        .iter()
        .filter_map(|f| siblings.iter().find(|s| &s.name == f))
        .filter(|s| cache_repo.get(&s.name).is_none())
        .collect();
    let needed: u64 = missing.iter().filter_map(|s| s.size).sum();
    std::fs::create_dir_all(cache.path()).map_err(|e| failed(repo, "", e))?;
    if let Some(free) = crate::telemetry::machine::disk_free_bytes(cache.path()) {
        if free < needed + (16 << 20) {
            return Err(DownloadError::DiskFull {
                repo: repo.id.clone(),
                dir: cache.path().clone(),
                needed,
                free,
            });
        }
    }
    let mut last = None;
    for (index, file) in files.iter().enumerate() {
        let sib = siblings.iter().find(|s| &s.name == file);
        let path = match cache_repo.get(file) {
            Some(p) => p,
            None => {
                let mut tracker = Tracker {
                    p: DownloadProgress {
                        file: file.clone(),
                        index,
                        files: files.len(),
                        done_bytes: 0,
                        total_bytes: sib.and_then(|s| s.size).unwrap_or(0),
                        bytes_per_sec: 0.0,
                        eta_secs: None,
                    },
                    started: Instant::now(),
                    resumed_from: None,
                    last_report: None,
                    report: progress,
                    cancelled: false,
                };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    api_repo.download_with_progress(file, &mut tracker)
                }));
                let r = match r {
                    Ok(r) => r,
                    Err(payload) if payload.is::<CancelDownload>() => {
                        return Err(DownloadError::Cancelled)
                    }
                    Err(payload) => std::panic::resume_unwind(payload),
                };
                if tracker.cancelled {
                    return Err(DownloadError::Cancelled);
                }
                match r {
                    Ok(p) => p,
                    Err(ApiError::RequestError(e)) => {
                        return Err(http_error(repo, &cache, file, &e))
                    }
                    Err(e) => return Err(failed(repo, file, e)),
                }
            }
        };
        if let Some(s) = sib {
            verify(repo, s, &path)?;
        }
        last = Some(path);
    }
    let last = last.ok_or_else(|| DownloadError::Choose(format!("{} lists no files", repo.id)))?;
    Ok(local_path(repo, &last))
}

/// The snapshot folder holding `file` (for a folder model), or the file
/// itself (a GGUF).
fn local_path(repo: &RepoRef, file: &Path) -> PathBuf {
    if repo.file.is_some() || file.extension().is_some_and(|e| e == "gguf") {
        return file.to_path_buf();
    }
    file.parent()
        .map_or_else(|| file.to_path_buf(), Path::to_path_buf)
}

/// Offline: what the cache holds for the revision, or a clear error.
fn from_cache(repo: &RepoRef, cache: &Cache) -> Result<PathBuf, DownloadError> {
    let cache_repo = cache.repo(repo.repo());
    let offline = |what: &str| DownloadError::Offline {
        repo: repo.id.clone(),
        what: what.to_string(),
        cache: cache.path().clone(),
    };
    if let Some(f) = &repo.file {
        return cache_repo.get(f).ok_or_else(|| offline(f));
    }
    let config = cache_repo
        .get("config.json")
        .ok_or_else(|| offline("config.json"))?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| offline("config.json"))?;
    // The weights the index names must all be there.
    if let Some(index) = cache_repo.get("model.safetensors.index.json") {
        let json: Json = std::fs::read(&index)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Json::Null);
        if let Some(map) = json.get("weight_map").and_then(Json::as_object) {
            for f in map.values().filter_map(Json::as_str) {
                if !dir.join(f).is_file() {
                    return Err(offline(f));
                }
            }
        }
    } else if cache_repo.get("model.safetensors").is_none() {
        return Err(offline("model.safetensors"));
    }
    Ok(dir)
}

/// Size and (for LFS files) SHA-256 against the listing; a mismatch removes
/// the cached copy.
fn verify(repo: &RepoRef, s: &Sibling, path: &Path) -> Result<(), DownloadError> {
    let corrupt = |message: String| {
        // The pointer, and the blob it points to.
        if let Ok(blob) = std::fs::canonicalize(path) {
            let _ = std::fs::remove_file(&blob);
        }
        let _ = std::fs::remove_file(path);
        DownloadError::Corrupt {
            repo: repo.id.clone(),
            file: s.name.clone(),
            message,
        }
    };
    let len = std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| failed(repo, &s.name, e))?;
    if let Some(size) = s.size {
        if len != size {
            return Err(corrupt(format!(
                "{len} bytes on disk, the Hub lists {size}"
            )));
        }
    }
    if let Some(want) = &s.sha256 {
        let got = sha256_file(path).map_err(|e| failed(repo, &s.name, e))?;
        if !got.eq_ignore_ascii_case(want) {
            return Err(corrupt(format!(
                "checksum mismatch (SHA-256 {got}, the Hub lists {want})"
            )));
        }
    }
    Ok(())
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn failed(repo: &RepoRef, file: &str, e: impl std::fmt::Display) -> DownloadError {
    DownloadError::Failed {
        repo: repo.id.clone(),
        file: file.to_string(),
        message: e.to_string(),
    }
}

fn http_error(repo: &RepoRef, cache: &Cache, file: &str, e: &ureq::Error) -> DownloadError {
    match e {
        ureq::Error::Status(401 | 403, _) => DownloadError::Gated {
            repo: repo.id.clone(),
            token_file: cache.token_path(),
        },
        ureq::Error::Status(404, _) => DownloadError::NotFound {
            repo: repo.id.clone(),
            revision: repo.revision.clone(),
        },
        other => failed(repo, file, other),
    }
}

/// The unwind payload of a cancelled download.
struct CancelDownload;

/// hf-hub's progress hook → [`DownloadProgress`] with speed and ETA.
struct Tracker<'a> {
    p: DownloadProgress,
    started: Instant,
    /// Bytes already on disk from an earlier attempt (not counted in speed).
    resumed_from: Option<u64>,
    last_report: Option<Instant>,
    report: &'a mut dyn FnMut(&DownloadProgress) -> bool,
    cancelled: bool,
}

impl hf_hub::api::Progress for &mut Tracker<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.p.total_bytes = size as u64;
        self.p.done_bytes = 0;
    }

    fn update(&mut self, size: usize) {
        self.p.done_bytes += size as u64;
        let base = *self.resumed_from.get_or_insert(self.p.done_bytes);
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.p.bytes_per_sec = (self.p.done_bytes - base) as f64 / secs;
        }
        self.p.eta_secs = (self.p.bytes_per_sec > 0.0).then(|| {
            self.p.total_bytes.saturating_sub(self.p.done_bytes) as f64 / self.p.bytes_per_sec
        });
        let due = self
            .last_report
            .is_none_or(|t| t.elapsed().as_millis() >= 100)
            || self.p.done_bytes >= self.p.total_bytes;
        if due {
            self.last_report = Some(Instant::now());
            if !(self.report)(&self.p) {
                self.cancelled = true;
                // hf-hub's copy loop has no way to stop: unwind out of it
                // (resume_unwind runs no panic hook). The partial file stays
                // and a later download resumes it.
                std::panic::resume_unwind(Box::new(CancelDownload));
            }
        }
    }

    fn finish(&mut self) {
        let _ = (self.report)(&self.p);
    }
}
