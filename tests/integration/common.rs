use std::path::PathBuf;
use std::process::{Command, Output};

/// Where `tests/fetch-models.sh` caches the models.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("SPILLWAY_TEST_MODELS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/spillway/test-models"),
    }
}

fn model(file: &str, fetch_name: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(
        p.is_file(),
        "{} is missing: run `tests/fetch-models.sh {fetch_name}` (the README's test command does)",
        p.display()
    );
    p
}

pub fn smollm2() -> PathBuf {
    model("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")
}

pub fn qwen05() -> PathBuf {
    model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen05")
}

pub fn gemma3() -> PathBuf {
    model("gemma-3-270m-q4_k_m.gguf", "gemma3")
}

pub fn spillway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the spillway binary runs")
}

/// Runs a command expected to succeed and parses its JSON stdout.
pub fn spillway_json(args: &[&str]) -> serde_json::Value {
    let out = spillway(args);
    assert!(
        out.status.success(),
        "spillway {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .expect("an array of token ids")
        .iter()
        .map(|x| x.as_u64().expect("a token id"))
        .collect()
}

pub fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Writes one HTTP/1.1 answer and closes (the local stand-ins for the Hub
/// and PyPI).
pub fn respond(
    s: &mut std::net::TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}
