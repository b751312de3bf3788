//! Downloads against a local HTTP server that answers as the Hugging Face
//! Hub does (the listing API and `resolve` URLs with ranges, commit and
//! etag headers), set as hf-hub's endpoint.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::common::respond;
use sha2::{Digest, Sha256};
use spillway::engine::{Engine, LoadOptions, LoadStage};
use spillway::weights::download::{download, DownloadError, DownloadProgress, HubOptions, RepoRef};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_test_token";

#[derive(Clone)]
struct ServedFile {
    bytes: Arc<Vec<u8>>,
    /// The SHA-256 the listing and the etag advertise.
    sha256: String,
}

#[derive(Default)]
struct Hub {
    repos: HashMap<String, Vec<(String, ServedFile)>>,
    gated: Vec<String>,
    /// Files whose first full-body response is cut after this many bytes.
    cut_once: HashMap<String, usize>,
    /// Every `Range` asked for, per file.
    ranges: Vec<(String, String)>,
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

struct Server {
    url: String,
    hub: Arc<Mutex<Hub>>,
}

impl Server {
    fn start(hub: Hub) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hub = Arc::new(Mutex::new(hub));
        let h = hub.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let h = h.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &h);
                });
            }
        });
        Server { url, hub }
    }

    fn add(&self, repo: &str, files: &[(&str, Vec<u8>)]) {
        let served = files
            .iter()
            .map(|(n, b)| {
                (
                    n.to_string(),
                    ServedFile {
                        sha256: sha256_hex(b),
                        bytes: Arc::new(b.clone()),
                    },
                )
            })
            .collect();
        self.hub
            .lock()
            .unwrap()
            .repos
            .insert(repo.to_string(), served);
    }
}

fn serve(mut stream: TcpStream, hub: &Mutex<Hub>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let (path, _query) = target.split_once('?').unwrap_or((&target, ""));
    let authorized = headers
        .get("authorization")
        .is_some_and(|a| a == &format!("Bearer {TOKEN}"));
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    // /api/models/{owner}/{name}/revision/{rev}
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let repo: String = rest.split('/').take(2).collect::<Vec<_>>().join("/");
        let hub = hub.lock().unwrap();
        if hub.gated.contains(&repo) && !authorized {
            return respond(
                &mut stream,
                "401 Unauthorized",
                &[],
                b"{\"error\":\"gated\"}",
            );
        }
        let Some(files) = hub.repos.get(&repo) else {
            return respond(&mut stream, "404 Not Found", &[], b"{}");
        };
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|(n, f)| serde_json::json!({"rfilename": n, "size": f.bytes.len(), "lfs": {"sha256": f.sha256, "size": f.bytes.len()}}))
            .collect();
        let body = json(serde_json::json!({"id": repo, "sha": COMMIT, "siblings": siblings}));
        return respond(
            &mut stream,
            "200 OK",
            &[
                ("Content-Type".into(), "application/json".into()),
                ("Content-Length".into(), body.len().to_string()),
            ],
            &body,
        );
    }
    // /{owner}/{name}/resolve/{rev}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() == 5 && parts[2] == "resolve" {
        let repo = format!("{}/{}", parts[0], parts[1]);
        let name = parts[4].to_string();
        let mut hub = hub.lock().unwrap();
        if hub.gated.contains(&repo) && !authorized {
            return respond(&mut stream, "401 Unauthorized", &[], b"");
        }
        let Some(file) = hub
            .repos
            .get(&repo)
            .and_then(|f| f.iter().find(|(n, _)| *n == name))
            .map(|(_, f)| f.clone())
        else {
            return respond(&mut stream, "404 Not Found", &[], b"");
        };
        let len = file.bytes.len();
        let range = headers
            .get("range")
            .cloned()
            .unwrap_or_else(|| "bytes=0-".into());
        hub.ranges.push((name.clone(), range.clone()));
        let spec = range.trim_start_matches("bytes=");
        let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
        let start: usize = a.parse().unwrap_or(0);
        let end: usize = if b.is_empty() {
            len - 1
        } else {
            b.parse::<usize>().unwrap_or(len - 1).min(len - 1)
        };
        let body = &file.bytes[start..=end];
        let cut = if start == 0 && end + 1 == len {
            hub.cut_once.remove(&name)
        } else {
            None
        };
        drop(hub);
        let headers = vec![
            ("x-repo-commit".to_string(), COMMIT.to_string()),
            ("x-linked-etag".to_string(), format!("\"{}\"", file.sha256)),
            (
                "Content-Range".to_string(),
                format!("bytes {start}-{end}/{len}"),
            ),
            ("Content-Length".to_string(), body.len().to_string()),
        ];
        let body = match cut {
            Some(n) => &body[..n.min(body.len())],
            None => body,
        };
        return respond(&mut stream, "206 Partial Content", &headers, body);
    }
    respond(&mut stream, "404 Not Found", &[], b"")
}

fn options(server: &Server, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: Some(server.url.clone()),
        cache_dir: Some(cache.to_path_buf()),
        token: None,
        offline: Some(false),
        retries: 3,
    }
}

fn repo(id: &str) -> RepoRef {
    RepoRef::parse(id).unwrap()
}

fn fixture_files(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
    .collect()
}

/// Progress with speed, a dropped connection resumed from where it
/// stopped, checksums verified, and the files in the Hugging Face cache
/// layout (snapshots/COMMIT/FILE).
#[test]
fn downloads_resume_and_report_progress() {
    let server = Server::start(Hub::default());
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut files = fixture_files("qwen2_tiny_text");
    // A file a model folder does not need (it is not fetched).
    files.push(("extra.safetensors.bin".into(), big.clone()));
    server.add(
        "acme/tiny",
        &files
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect::<Vec<_>>(),
    );
    server.add(
        "acme/tiny-gguf",
        &[
            ("tiny.Q8_0.gguf", big.clone()),
            ("README.md", b"hi".to_vec()),
        ],
    );
    server
        .hub
        .lock()
        .unwrap()
        .cut_once
        .insert("tiny.Q8_0.gguf".into(), 1_000_000);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(&server, cache.path());

    let mut seen: Vec<DownloadProgress> = Vec::new();
    let path = download(&repo("acme/tiny-gguf"), &opts, &mut |p| {
        seen.push(p.clone());
        true
    })
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), big);
    assert!(
        path.ends_with(format!(
            "models--acme--tiny-gguf/snapshots/{COMMIT}/tiny.Q8_0.gguf"
        )),
        "{}",
        path.display()
    );
    let last = seen.last().unwrap();
    assert_eq!(
        (last.done_bytes, last.total_bytes),
        (big.len() as u64, big.len() as u64)
    );
    assert!(
        seen.len() >= 2 && seen.iter().any(|p| p.bytes_per_sec > 0.0),
        "{seen:?}"
    );
    // The cut response was resumed with a range from where it stopped.
    let ranges = server.hub.lock().unwrap().ranges.clone();
    assert!(
        ranges.iter().any(|(f, r)| f == "tiny.Q8_0.gguf"
            && r.starts_with("bytes=")
            && !r.starts_with("bytes=0-")),
        "{ranges:?}"
    );

    // A model folder: configs, tokenizer and safetensors (not other files).
    let dir = download(&repo("acme/tiny"), &opts, &mut |_| true).unwrap();
    assert!(dir.join("config.json").is_file() && dir.join("model.safetensors").is_file());
    assert!(!dir.join("extra.safetensors.bin").exists());
    // Again: everything is in the cache, nothing is fetched.
    let before = server.hub.lock().unwrap().ranges.len();
    assert_eq!(
        download(&repo("acme/tiny"), &opts, &mut |_| true).unwrap(),
        dir
    );
    assert_eq!(server.hub.lock().unwrap().ranges.len(), before);

    // Offline: the cache answers; a repo never downloaded is a clear error.
    let offline = HubOptions {
        offline: Some(true),
        ..opts.clone()
    };
    assert_eq!(
        download(&repo("acme/tiny"), &offline, &mut |_| true).unwrap(),
        dir
    );
    let err = download(&repo("acme/other"), &offline, &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("acme/other"),
        "{err}"
    );
}

/// The engine takes a repo id as its model: downloaded, converted, loaded,
/// with download progress among the load stages; the reply matches the
/// reference.
#[test]
fn a_repo_id_loads_like_a_folder() {
    let server = Server::start(Hub::default());
    let files = fixture_files("qwen2_tiny_text");
    server.add(
        "acme/qwen-tiny",
        &files
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect::<Vec<_>>(),
    );
    let cache = tempfile::tempdir().unwrap();
    let mut opts = LoadOptions::new("acme/qwen-tiny");
    opts.hub = options(&server, &cache.path().join("hf"));
    opts.cache_dir = Some(cache.path().join("converted"));
    let mut downloading = 0;
    let mut e = Engine::load(&opts, &mut |s| {
        if matches!(s, LoadStage::Downloading(_)) {
            downloading += 1;
        }
    })
    .unwrap();
    assert!(downloading > 0);
    let reference = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/qwen2_tiny_text/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let ids: Vec<u32> = reference["prompt"]["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<u32> = reference["greedy"]["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let params = spillway::engine::GenerateParams {
        max_tokens: 8,
        sampling: spillway::model::sampler::SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        speculative: true,
    };
    let gen = e
        .generate(&ids, &params, &Default::default(), &mut |_| {})
        .unwrap();
    assert_eq!(gen.generated_tokens, want);
}

/// A file whose bytes do not match the Hub's checksum is reported and
/// removed, never used.
#[test]
fn a_checksum_mismatch_is_reported_and_the_file_not_used() {
    let server = Server::start(Hub::default());
    server.add("acme/bad", &[("bad.gguf", vec![7u8; 50_000])]);
    // The listing and etag claim other bytes.
    server
        .hub
        .lock()
        .unwrap()
        .repos
        .get_mut("acme/bad")
        .unwrap()[0]
        .1
        .sha256 = sha256_hex(b"something else");
    let cache = tempfile::tempdir().unwrap();
    let opts = options(&server, cache.path());
    let err = download(&repo("acme/bad"), &opts, &mut |_| true).unwrap_err();
    assert!(matches!(err, DownloadError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    let cached = hf_hub::Cache::new(cache.path().to_path_buf())
        .repo(hf_hub::Repo::model("acme/bad".into()))
        .get("bad.gguf");
    assert!(cached.as_ref().is_none_or(|p| !p.exists()), "{cached:?}");
}

/// A gated repo without a token says what to do; with the token it works
/// (from HubOptions here; HF_TOKEN and the token file feed the same field).
#[test]
fn a_gated_repo_without_a_token_is_explained() {
    let server = Server::start(Hub::default());
    server.add("BAAI/gated", &[("model.gguf", vec![1u8; 1000])]);
    server.hub.lock().unwrap().gated.push("BAAI/gated".into());
    // HF_HOME's layout: the cache in hub/, the token file beside it.
    let home = tempfile::tempdir().unwrap();
    let mut opts = options(&server, &home.path().join("hub"));
    let err = download(&repo("BAAI/gated"), &opts, &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gated") && err.contains("HF_TOKEN") && err.contains("huggingface-cli login"),
        "{err}"
    );
    // The token file in the cache folder is read too.
    std::fs::write(home.path().join("token"), TOKEN).unwrap();
    let path = download(&repo("BAAI/gated"), &opts, &mut |_| true).unwrap();
    assert_eq!(std::fs::read(path).unwrap().len(), 1000);
    opts.token = Some("hf_wrong".into());
    let other = tempfile::tempdir().unwrap();
    opts.cache_dir = Some(other.path().to_path_buf());
    assert!(download(&repo("BAAI/gated"), &opts, &mut |_| true).is_err());
}

#[test]
fn repo_ids_parse() {
    let r = RepoRef::parse("mistralai/Mistral-7B-Instruct-v0.3").unwrap();
    assert_eq!(
        (r.id.as_str(), r.revision.as_str(), r.file),
        ("mistralai/Mistral-7B-Instruct-v0.3", "main", None)
    );
    let r = RepoRef::parse("Qwen/Qwen2.5-0.5B-Instruct-GGUF@v1:qwen2.5-0.5b-instruct-q4_k_m.gguf")
        .unwrap();
    assert_eq!(
        (r.revision.as_str(), r.file.as_deref()),
        ("v1", Some("qwen2.5-0.5b-instruct-q4_k_m.gguf"))
    );
    for not in ["model.gguf", "./a/b", "/abs/path", "a/b/c", "a/", "a b/c"] {
        assert!(RepoRef::parse(not).is_none(), "{not}");
    }
}
