//! Files edited by a hostile hand: every size read from a file is bounded
//! before it sizes anything, so each gives one `error:` line and exit code
//! 1, never an abort; and the fuzzers run (issue 16, docs/RELIABILITY.md).

use std::path::{Path, PathBuf};

use spillway::fuzz::mutate::with_metadata;
use spillway::weights::gguf::Value;

use crate::common::{path_str, spillway};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A tiny Mistral-shaped GGUF (2 blocks) written by `synthesize`.
fn tiny_gguf(dir: &Path) -> Vec<u8> {
    let out = dir.join("tiny.gguf");
    let r = spillway(&[
        "synthesize",
        "--config",
        path_str(&fixtures().join("mistral_tiny/config.json")),
        "--quant",
        "q8_0",
        "-o",
        path_str(&out),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    std::fs::read(&out).unwrap()
}

fn one_error_line(args: &[&str], expect: &str) {
    let out = spillway(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("warning:"))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(expect),
        "expected '{expect}' in: {stderr}"
    );
}

#[test]
fn hostile_gguf_sizes_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_gguf(dir.path());
    let cases: [(&str, Value, &str); 5] = [
        (
            "llama.context_length",
            Value::U32(0x7FFF_FFFF),
            "not a plausible size",
        ),
        (
            "llama.block_count",
            Value::U32(0x7FFF_FFFF),
            "not a plausible size",
        ),
        (
            "llama.block_count",
            Value::U32(3),
            "declares 3 blocks but the file holds tensors for 2",
        ),
        (
            "llama.embedding_length",
            Value::U64(u64::MAX),
            "not a plausible size",
        ),
        (
            "llama.attention.key_length",
            Value::U32(1 << 20),
            "not a plausible size",
        ),
    ];
    for (key, value, expect) in cases {
        let bytes = with_metadata(&base, &[(key, Some(value.clone()))]).unwrap();
        let path = dir.path().join("hostile.gguf");
        std::fs::write(&path, bytes).unwrap();
        for cmd in ["generate", "plan"] {
            let mut args = vec![cmd, "--model", path_str(&path)];
            if cmd == "generate" {
                args.extend(["--prompt", "hi", "--max-tokens", "1"]);
            }
            one_error_line(&args, expect);
        }
    }
    // A context the model was trained for but nobody asked for is not what
    // the tables are sized by: a 16M-token header loads with the default.
    let bytes = with_metadata(
        &base,
        &[("llama.context_length", Some(Value::U32(1 << 24)))],
    )
    .unwrap();
    let path = dir.path().join("long.gguf");
    std::fs::write(&path, bytes).unwrap();
    let out = spillway(&[
        "generate",
        "--model",
        path_str(&path),
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hostile_config_json_is_refused_before_building_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut c: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("mistral_tiny/config.json")).unwrap(),
    )
    .unwrap();
    c["num_hidden_layers"] = 0x7FFF_FFFFu64.into();
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, serde_json::to_vec(&c).unwrap()).unwrap();
    one_error_line(&["plan", "--model", path_str(&cfg)], "num_hidden_layers");
    one_error_line(
        &[
            "synthesize",
            "--config",
            path_str(&cfg),
            "--quant",
            "q8_0",
            "-o",
            path_str(&dir.path().join("x.gguf")),
        ],
        "num_hidden_layers",
    );
    // A checkpoint folder whose config declares more layers than its
    // weights hold.
    let hf = dir.path().join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixtures().join("mistral_tiny").join(f), hf.join(f)).unwrap();
    }
    c["num_hidden_layers"] = 3.into();
    std::fs::write(hf.join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
    one_error_line(
        &[
            "generate",
            "--model",
            path_str(&hf),
            "--prompt",
            "hi",
            "--quant",
            "q8_0",
        ],
        "declares 3 layers but the weights hold 2",
    );
}

/// `--dtype f16` is refused, not accepted and ignored.
#[test]
fn an_unsupported_compute_dtype_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_gguf(dir.path())).unwrap();
    one_error_line(
        &[
            "generate",
            "--model",
            path_str(&path),
            "--prompt",
            "hi",
            "--dtype",
            "f16",
        ],
        "not supported",
    );
}

/// No subcommand makes an `offload/` folder in the working directory that
/// the user did not ask for.
#[test]
fn no_offload_folder_appears_uninvited() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, tiny_gguf(dir.path())).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .current_dir(&work)
        .args([
            "generate",
            "--model",
            path_str(&model),
            "--prompt",
            "hi",
            "--max-tokens",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(made.is_empty(), "left behind: {made:?}");
}

/// The regression corpus (inputs that once crashed, and the hostile
/// examples) replays without a crash, and a short seeded fuzz run of every
/// target finds nothing. `SPILLWAY_FUZZ_SECONDS` sets seconds per target.
#[test]
fn fuzz_corpus_replays_and_a_short_run_finds_nothing() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let out = spillway(&["fuzz", "--replay", path_str(&corpus)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seconds = std::env::var("SPILLWAY_FUZZ_SECONDS").unwrap_or_else(|_| "12".into());
    let crashes = tempfile::tempdir().unwrap();
    let out = spillway(&[
        "fuzz",
        "--seed",
        "16",
        "--seconds",
        &seconds,
        "--crashes",
        path_str(crashes.path()),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 8, "{stdout}");
}

/// A `tokenizer.json` beside a GGUF is used only when it is the model's
/// (same tokens); another model's is named in a warning and the GGUF's own
/// tokenizer is used.
#[test]
fn a_foreign_tokenizer_json_beside_a_gguf_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, tiny_gguf(dir.path())).unwrap();
    let run = || {
        spillway(&[
            "generate",
            "--model",
            path_str(&model),
            "--prompt",
            "hello",
            "--max-tokens",
            "1",
            "--greedy",
            "--json",
        ])
    };
    let own = run();
    assert!(own.status.success());
    let own_json: serde_json::Value = serde_json::from_slice(&own.stdout).unwrap();
    // Mistral's tokenizer (700 tokens, like this model's cut of SmolLM2's,
    // but other tokens) beside the file.
    std::fs::copy(
        fixtures().join("mistral_tiny/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("is not this model's tokenizer"), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["prompt_tokens"], own_json["prompt_tokens"]);
    // A broken one is a warning too, not a failed load.
    std::fs::write(dir.path().join("tokenizer.json"), b"{ not json").unwrap();
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The window killed (`kill -9`) at random instants while replies stream
/// and conversations are saved, 50 times: every history file parses, no
/// message saved before a kill is missing or shorter after it, and replies
/// cut off mid-stream were saved as far as they had come (at least every
/// second), not lost.
#[test]
fn killed_at_random_instants_the_history_loses_nothing_saved() {
    use spillway::chat::history::Conversation;
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    // A real small model: replies take seconds, so kills land mid-reply.
    let model = crate::common::smollm2();
    let data = dir.path().join("soak");
    let conversations = data.join("data/conversations");
    let mut rng = spillway::fuzz::Rng::new(50);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(420);
    let mut saved: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut cut_replies = std::collections::HashSet::new();
    let mut kills = 0;
    while kills < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {kills} kills in time"
        );
        let names = || -> std::collections::HashSet<std::ffi::OsString> {
            std::fs::read_dir(&conversations)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name())
                .collect()
        };
        let before = names();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args([
                "soak-window",
                "--model",
                path_str(&model),
                "--data",
                path_str(&data),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Once this run's first message is saved (its reply is streaming),
        // a random instant within the next 2.5 s: while tokens stream,
        // while saves are written, or as the next message starts.
        let started = std::time::Instant::now();
        while names().is_subset(&before) && started.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.below(2500) as u64));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the window exited by itself"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        let mut now: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for e in std::fs::read_dir(&conversations)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".tmp-") {
                continue;
            }
            let bytes = std::fs::read(e.path()).unwrap();
            let c: Conversation = serde_json::from_slice(&bytes)
                .unwrap_or_else(|err| panic!("kill {kills}: {name} does not parse: {err}"));
            // A reply cut off by the kill, kept as far as it had streamed.
            if c.messages
                .last()
                .is_some_and(|m| m.incomplete && !m.text.is_empty())
            {
                cut_replies.insert(name.clone());
            }
            let msgs = c
                .messages
                .iter()
                .map(|m| (m.role.clone(), m.text.clone()))
                .collect();
            now.insert(name, msgs);
        }
        for (name, before) in &saved {
            let after = now
                .get(name)
                .unwrap_or_else(|| panic!("kill {kills}: {name} is gone"));
            assert!(
                after.len() >= before.len(),
                "kill {kills}: {name} lost messages"
            );
            for (i, (b, a)) in before.iter().zip(after).enumerate() {
                assert_eq!(b.0, a.0, "kill {kills}: {name} message {i}'s role");
                assert!(
                    a.1.starts_with(&b.1),
                    "kill {kills}: {name} message {i} lost text"
                );
            }
        }
        saved = now;
    }
    assert!(
        saved.len() >= 10,
        "only {} conversations saved",
        saved.len()
    );
    let cut = cut_replies.len();
    eprintln!(
        "{} conversations, {cut} replies saved part-way when killed",
        saved.len()
    );
    assert!(cut >= 5, "only {cut} replies were saved part-way");
}
