//! `spillway soak-window` (hidden): the window's logic without a display,
//! over the real engine, sending messages and streaming replies until it
//! is killed. The kill-loop test (tests/integration/reliability.rs) kills it
//! at random instants and checks that every conversation file still parses
//! and holds every message saved before.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use crate::config::Config;
use crate::ui::app::SpillwayApp;

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// The model to chat with.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// The data folder (history) and settings folder's parent.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Stop after this many replies (default: run until killed).
    #[arg(long, default_value_t = u64::MAX)]
    replies: u64,
}

pub fn run(a: SoakArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::defaults()?;
    // Long replies, so that kills land while one streams and after it has
    // been saved part-way.
    config.generation.max_new_tokens = 400;
    config.context_length = Some(1024);
    let link = crate::engine::worker::spawn(std::sync::Arc::new(|| {}));
    let mut app = SpillwayApp::new(
        link,
        &config,
        Some(a.data.join("data")),
        Some(a.data.join("config")),
    );
    let ctx = egui::Context::default();
    let frame = |app: &mut SpillwayApp| {
        let input = egui::RawInput {
            screen_rect: Some(egui::Rect::from_min_size(
                egui::Pos2::ZERO,
                egui::vec2(1200.0, 800.0),
            )),
            ..Default::default()
        };
        ctx.run_ui(input, |ui| app.frame_ui(ui))
            .drop_without_applying_deltas();
        std::thread::sleep(Duration::from_millis(2));
    };
    app.load_model(a.model.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    while app.model.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "the model did not load");
        if app.loading.is_none() && !app.banners.is_empty() {
            anyhow::bail!("the model did not load: {:?}", app.banners);
        }
        frame(&mut app);
    }
    for n in 0..a.replies {
        // Each message starts a conversation: a file per reply, and a
        // context that never fills.
        app.new_conversation();
        app.composer = format!("message {n}: tell me a long story about the sea");
        app.send_message();
        while app.streaming.is_some() {
            frame(&mut app);
        }
        frame(&mut app);
    }
    Ok(ExitCode::SUCCESS)
}
