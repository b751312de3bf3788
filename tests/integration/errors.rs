//! Bad input gets one clear line on stderr and a non-zero exit, never a
//! panic.

use std::io::Write;

use crate::common::{path_str, smollm2, spillway};

fn assert_clean_failure(args: &[&str], expect_in_message: &str) {
    let out = spillway(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?} printed more than one line: {stderr}"
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0]
            .to_lowercase()
            .contains(&expect_in_message.to_lowercase()),
        "{args:?}: expected '{expect_in_message}' in: {stderr}"
    );
}

/// A GGUF header with the given architecture and nothing else of use.
fn gguf_with_arch(arch: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes()); // tensors
    out.extend(1u64.to_le_bytes()); // metadata entries
    let key = "general.architecture";
    out.extend((key.len() as u64).to_le_bytes());
    out.extend(key.as_bytes());
    out.extend(8u32.to_le_bytes());
    out.extend((arch.len() as u64).to_le_bytes());
    out.extend(arch.as_bytes());
    out
}

#[test]
fn missing_file() {
    assert_clean_failure(
        &[
            "generate",
            "--model",
            "/nonexistent/model.gguf",
            "--prompt",
            "hi",
        ],
        "does not exist",
    );
}

#[test]
fn not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.gguf");
    std::fs::write(&p, b"<html>404 not found</html>").unwrap();
    assert_clean_failure(
        &["generate", "--model", path_str(&p), "--prompt", "hi"],
        "not a GGUF file",
    );
}

#[test]
fn corrupt_header() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend([0xAB; 100]);
    std::fs::write(&p, bytes).unwrap();
    assert_clean_failure(
        &["generate", "--model", path_str(&p), "--prompt", "hi"],
        "corrupt",
    );
    assert_clean_failure(&["inspect", "--model", path_str(&p)], "corrupt");
}

#[test]
fn truncated_real_model() {
    let src = std::fs::read(smollm2()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for keep in [src.len() / 2, 3000, 100] {
        let p = dir.path().join(format!("cut-{keep}.gguf"));
        std::fs::File::create(&p)
            .unwrap()
            .write_all(&src[..keep])
            .unwrap();
        assert_clean_failure(
            &["generate", "--model", path_str(&p), "--prompt", "hi"],
            "truncated or corrupt",
        );
    }
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mamba.gguf");
    std::fs::write(&p, gguf_with_arch("mamba")).unwrap();
    assert_clean_failure(
        &["generate", "--model", path_str(&p), "--prompt", "hi"],
        "unsupported architecture 'mamba'",
    );
}

#[test]
fn prompt_longer_than_context() {
    let long = "word ".repeat(200);
    assert_clean_failure(
        &[
            "generate",
            "--model",
            path_str(&smollm2()),
            "--ctx",
            "64",
            "--prompt",
            &long,
        ],
        "the context holds 64",
    );
}

#[test]
fn bad_chat_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("chat.json");
    std::fs::write(&p, b"{\"role\": \"user\"}").unwrap();
    assert_clean_failure(
        &[
            "generate",
            "--model",
            path_str(&smollm2()),
            "--chat",
            path_str(&p),
        ],
        "not a JSON array",
    );
}

#[test]
fn missing_offload_folder_is_created_and_bad_one_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    assert_clean_failure(
        &[
            "generate",
            "--model",
            path_str(&smollm2()),
            "--prompt",
            "hi",
            "--disk-layers",
            "2",
            "--offload-dir",
            path_str(&file.join("sub")),
        ],
        "offload folder",
    );
}

#[test]
fn bad_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.yaml");
    std::fs::write(&p, "generation:\n  temprature: 2\n").unwrap();
    assert_clean_failure(
        &[
            "--config",
            path_str(&p),
            "generate",
            "--model",
            path_str(&smollm2()),
            "--prompt",
            "hi",
        ],
        "unknown field `temprature`",
    );
    assert_clean_failure(
        &[
            "--config",
            path_str(&dir.path().join("absent.yaml")),
            "inspect",
            "--model",
            "x",
        ],
        "cannot read config",
    );
}

#[test]
fn context_beyond_the_model() {
    assert_clean_failure(
        &[
            "generate",
            "--model",
            path_str(&smollm2()),
            "--ctx",
            "1000000000",
            "--prompt",
            "hi",
        ],
        "exceeds the 8192 this model was trained for",
    );
}
