//! `spillway serve` against the official OpenAI Python client
//! (tests/reference/openai_client.py; `openai` from PyPI, installed by the
//! test command): replies equal `spillway generate`'s, token counts equal
//! the tokenizer's, errors have OpenAI's shape and status, four clients at
//! once, a closed stream frees the engine, and an image as a data: URL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{smollm2, spillway, spillway_json};

/// A `spillway serve` child, killed when dropped.
struct Server {
    child: Child,
    base_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEY: &str = "sk-spillway-test";

fn serve(model: &Path, extra: &[&str], cache: Option<&Path>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
    cmd.args(["serve", "--port", "0", "--api-key", KEY, "--model"])
        .arg(model)
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(c) = cache {
        cmd.env("SPILLWAY_CACHE_DIR", c);
    }
    let mut child = cmd.spawn().expect("spillway serve starts");
    let start = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(&ready) {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            return Server {
                child,
                base_url: v["base_url"].as_str().unwrap().to_string(),
                _dir: dir,
            };
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("spillway serve exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "serve never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn client(args: &[&str], expected: &serde_json::Value) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("expected.json");
    std::fs::write(&exp, expected.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/openai_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args(&args[..3])
        .arg(&exp)
        .args(&args[3..])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the OpenAI client's checks failed (is `openai` installed? the test command installs it):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    eprintln!("client report: {last}");
    serde_json::from_str(last).unwrap()
}

/// `spillway generate --server` against `server` (with the test key): its
/// JSON.
fn via_server(server: &Server, model: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec![
        "generate",
        "--server",
        &server.base_url,
        "--api-key",
        KEY,
        "--model",
        model,
        "--json",
    ];
    all.extend_from_slice(args);
    spillway_json(&all)
}

/// The fields of `generate --json` the client compares against.
fn expected(v: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "text": v["text"],
        "prompt_tokens": v["prompt_tokens"].as_array().map_or(0, Vec::len),
        "generated_tokens": v["generated_tokens"].as_array().map_or(0, Vec::len),
        "finish_reason": if v["finish_reason"] == "length" { "length" } else { "stop" },
    })
}

#[test]
fn openai_client_against_spillway_serve() {
    let m = smollm2();
    let model = m.to_str().unwrap();
    let want = spillway_json(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "Name the capital of France.",
        "--greedy",
        "--max-tokens",
        "24",
        "--ctx",
        "512",
        "--json",
    ]);
    let server = serve(&m, &["--ctx", "512", "--max-body-mib", "1"], None);
    let report = client(&["text", &server.base_url, KEY], &expected(&want));
    assert!(
        report["whole"].as_str().unwrap().contains("Paris"),
        "{report}"
    );
    // Spillway as the client: the same reply through `generate --server`.
    let name = report["model"].as_str().unwrap();
    let remote = via_server(
        &server,
        name,
        &[
            "--prompt",
            "Name the capital of France.",
            "--greedy",
            "--max-tokens",
            "24",
        ],
    );
    assert_eq!(remote["text"], want["text"]);
    assert_eq!(
        remote["usage"]["completion_tokens"],
        expected(&want)["generated_tokens"]
    );
    assert!(remote["decode_tokens_per_sec"].as_f64().unwrap() > 0.0);
    let out = spillway(&[
        "generate",
        "--server",
        &server.base_url,
        "--api-key",
        "wrong",
        "--model",
        name,
        "--prompt",
        "hi",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the API key") && err.lines().count() == 1,
        "{err}"
    );
    // 3000 tokens would take a minute: the engine stopped within seconds.
    assert!(report["freed_after_close_secs"].as_f64().unwrap() < 5.0);
    assert!(report["next_reply_secs"].as_f64().unwrap() < 10.0);
}

#[test]
fn openai_client_sends_an_image() {
    let dir = crate::hf::fixture("qwen2_5_vl_tiny");
    let cache = tempfile::tempdir().unwrap();
    let image = dir.join("image.png");
    // The same request locally and through the server.
    let args = [
        "--prompt",
        "Describe the image.",
        "--image",
        image.to_str().unwrap(),
        "--greedy",
        "--max-tokens",
        "8",
    ];
    let want = crate::hf::generate_json(&dir, &args, cache.path());
    let server = serve(&dir, &[], Some(cache.path()));
    let report = client(
        &["image", &server.base_url, KEY, image.to_str().unwrap()],
        &expected(&want),
    );
    assert_eq!(report["image_reply"], want["text"]);
    // Spillway as the client, the image sent inline.
    let remote = via_server(&server, "qwen2_5_vl_tiny", &args);
    assert_eq!(remote["text"], want["text"]);
}

/// The window with Settings → Engine set to a server (no fake engine: the
/// remote worker over HTTP): it lists the server's models, connects,
/// streams a greedy reply into the conversation (`expect`, when given),
/// shows the server in the placement panel, and when the server is gone
/// says so in a banner with advice.
fn window_chats_through(server: Server, key: &str, model: &str, expect: Option<&str>) {
    use egui_kittest::kittest::Queryable;
    use spillway::ui::SpillwayApp;

    let (link, _ends) = spillway::engine::worker::channel();
    let mut app = SpillwayApp::new(
        link,
        &spillway::config::Config::defaults().unwrap(),
        None,
        None,
    );
    app.settings.engine = "server".into();
    app.settings.server_url = server.base_url.clone();
    app.settings.server_key = key.into();
    app.settings.temperature = 0.0;
    app.settings.repetition_penalty = 1.0;
    app.settings.max_new_tokens = 24;
    // The model list comes from the server.
    app.list_server_models();
    app.poll_listing(true);
    assert_eq!(app.settings.server_model, model);
    app.switch_engine();
    let mut harness = egui_kittest::Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_ui_state(|ui, app: &mut SpillwayApp| app.frame_ui(ui), app);
    let until = |h: &mut egui_kittest::Harness<'_, SpillwayApp>,
                 what: &str,
                 ok: &dyn Fn(&SpillwayApp) -> bool| {
        let start = Instant::now();
        while !ok(h.state()) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            h.run_steps(1);
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    until(&mut harness, "the server's model", &|a| a.model.is_some());
    assert_eq!(
        harness.state().model.as_ref().unwrap().remote.as_deref(),
        Some(server.base_url.as_str())
    );
    harness.get_by_label(&server.base_url);
    let composer = harness.get_by_role(egui::accesskit::Role::MultilineTextInput);
    composer.focus();
    harness.run_steps(2);
    harness
        .get_by_role(egui::accesskit::Role::MultilineTextInput)
        .type_text(PROMPT);
    harness.run_steps(2);
    harness.get_by_label("Send").click();
    harness.run_steps(2);
    until(&mut harness, "the reply", &|a| a.streaming.is_none());
    let app = harness.state();
    let reply = app.conversations[app.current].messages.last().unwrap();
    assert!(!reply.text.is_empty() && !reply.incomplete, "{reply:?}");
    if let Some(want) = expect {
        assert_eq!(reply.text, want);
    }
    assert!(reply.stats.unwrap().decode_tokens_per_sec > 0.0);
    assert!(reply.stats.unwrap().time_to_first_token_secs > 0.0);
    let first = reply.text.clone();
    // Regenerate: the reply is replaced by the server's new one (greedy:
    // the same text).
    harness.get_by_label("Regenerate").click();
    harness.run_steps(2);
    until(&mut harness, "the regenerated reply", &|a| {
        a.streaming.is_none()
    });
    let app = harness.state();
    let messages = &app.conversations[app.current].messages;
    assert_eq!(messages.len(), 2, "one question, one reply");
    assert_eq!(messages[1].text, first);

    // The server goes away: the next reply fails with a banner and advice.
    let url = server.base_url.clone();
    drop(server);
    let banners = harness.state().banners.len();
    harness.state_mut().composer = "And of Italy?".into();
    harness.get_by_label("Send").click();
    until(&mut harness, "the failure", &|a| {
        a.streaming.is_none() && a.banners.len() > banners
    });
    let b = harness.state().banners.last().unwrap();
    assert!(b.message.contains("cannot reach"), "{}", b.message);
    assert!(b.message.contains("running"), "{}", b.message);
    // A desktop's real keyring keeps nothing of the test.
    let _ = spillway::ui::keys::store(&url, "");
}

const PROMPT: &str = "Name the capital of France.";

/// A full queue answers 503 (`--queue 1`: one reply running, the next
/// refused until it ends).
#[test]
fn a_full_queue_is_a_503() {
    let server = serve(&smollm2(), &["--queue", "1", "--ctx", "4096"], None);
    let url = format!("{}/chat/completions", server.base_url);
    let body = |n: usize| {
        serde_json::json!({
            "model": "SmolLM2-135M-Instruct.Q4_1",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": n, "ignore_eos": true, "stream": true,
        })
    };
    let busy = ureq::post(&url)
        .set("Authorization", &format!("Bearer {KEY}"))
        .send_json(body(2000))
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(busy.into_reader()));
    // The first reply is streaming.
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));
    match ureq::post(&url)
        .set("Authorization", &format!("Bearer {KEY}"))
        .send_json(body(4))
    {
        Err(ureq::Error::Status(503, r)) => {
            let v: serde_json::Value = r.into_json().unwrap();
            assert_eq!(v["error"]["code"], "queue_full");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // Closing the first stream frees the place.
    drop(lines);
    let start = Instant::now();
    loop {
        let r = ureq::post(&url)
            .set("Authorization", &format!("Bearer {KEY}"))
            .send_json(body(4));
        match r {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                break;
            }
            Err(ureq::Error::Status(503, _)) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn the_window_chats_through_spillway_serve() {
    let m = smollm2();
    let server = serve(&m, &["--ctx", "512"], None);
    window_chats_through(server, KEY, "SmolLM2-135M-Instruct.Q4_1", None);
}

/// llama.cpp's llama-server, built by tests/fetch-llama-server.sh (the test
/// command runs it), serving SmolLM2 on a free loopback port.
fn llama_server() -> Server {
    let bin = std::env::var_os("SPILLWAY_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".cache/spillway/llama-server-0.3.36/llama-server")
        });
    assert!(
        bin.is_file(),
        "{} is missing: run tests/fetch-llama-server.sh (the README's test command does)",
        bin.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .arg("-m")
        .arg(smollm2())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "-c",
            "1024",
            "-t",
            "2",
            "--alias",
            "smollm2",
            "--api-key",
            KEY,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("llama-server starts");
    let server = Server {
        child,
        base_url: format!("http://127.0.0.1:{port}/v1"),
        _dir: tempfile::tempdir().unwrap(),
    };
    let start = Instant::now();
    loop {
        if let Ok(r) = ureq::get(&format!("http://127.0.0.1:{port}/health")).call() {
            if r.status() == 200 {
                return server;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "llama-server never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Spillway as the client of an independent server: `generate --server`'s
/// greedy reply equals llama-server's own greedy completion of the same
/// chat, and the window streams the same reply from it.
#[test]
fn spillway_chats_through_llama_server() {
    let server = llama_server();
    let own: serde_json::Value = ureq::post(&format!("{}/chat/completions", server.base_url))
        .set("Authorization", &format!("Bearer {KEY}"))
        .send_json(serde_json::json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": PROMPT}],
            "temperature": 0,
            "max_tokens": 24,
        }))
        .unwrap()
        .into_json()
        .unwrap();
    let want = own["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!want.is_empty());
    let ours = via_server(
        &server,
        "smollm2",
        &[
            "--prompt",
            PROMPT,
            "--greedy",
            "--repeat-penalty",
            "1",
            "--max-tokens",
            "24",
        ],
    );
    assert_eq!(ours["text"], want.as_str());
    assert_eq!(
        ours["usage"]["completion_tokens"],
        own["usage"]["completion_tokens"]
    );
    assert_eq!(
        ours["usage"]["prompt_tokens"],
        own["usage"]["prompt_tokens"]
    );
    window_chats_through(server, KEY, "smollm2", Some(&want));
}

/// An image attached in the window reaches a vision model on a server
/// (inlined as a `data:` URL): the server counts its tokens in the prompt.
#[test]
fn the_window_sends_an_image_to_a_server() {
    use spillway::ui::SpillwayApp;

    let dir = crate::hf::fixture("qwen2_5_vl_tiny");
    let cache = tempfile::tempdir().unwrap();
    let server = serve(&dir, &[], Some(cache.path()));
    let data = tempfile::tempdir().unwrap();
    let (link, _ends) = spillway::engine::worker::channel();
    let mut app = SpillwayApp::new(
        link,
        &spillway::config::Config::defaults().unwrap(),
        Some(data.path().to_path_buf()),
        None,
    );
    app.settings.engine = "server".into();
    app.settings.server_url = server.base_url.clone();
    app.settings.server_key = KEY.into();
    app.settings.server_model = "qwen2_5_vl_tiny".into();
    app.settings.temperature = 0.0;
    app.settings.max_new_tokens = 4;
    app.switch_engine();
    let wait = |app: &mut SpillwayApp, what: &str, ok: &dyn Fn(&SpillwayApp) -> bool| {
        let start = Instant::now();
        while !ok(app) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            app.drain_events();
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(&mut app, "the server's model", &|a| a.model.is_some());
    app.attach_file(&dir.join("image.png"));
    app.poll_attaching(true);
    assert_eq!(app.attachments.len(), 1);
    app.composer = "Describe the image.".into();
    app.send_message();
    wait(&mut app, "the reply", &|a| a.streaming.is_none());
    let banners: Vec<_> = app.banners.iter().map(|b| b.message.clone()).collect();
    let reply = app.conversations[app.current]
        .messages
        .last()
        .unwrap_or_else(|| panic!("no reply: {banners:?}"));
    let stats = reply.stats.expect("a finished reply");
    // 224×168 pixels are 48 image tokens, all counted by the server.
    assert!(stats.prompt_tokens > 48, "{stats:?}");
    assert!(!reply.text.is_empty() && !reply.incomplete, "{reply:?}");
    let _ = spillway::ui::keys::store(&server.base_url, "");
}
