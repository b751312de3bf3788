//! The real window over a scripted engine, for the docs' overlay
//! screenshot (docs/screenshots/take-overlay.sh): a RoboBrain-like model is
//! "loaded", the scene image is attached in pointing mode, the question is
//! sent, and the engine answers with the scripted text given on the
//! command line. Nothing is computed: the picture shows how the window
//! draws an answer, not what a model answered.
//!
//!   cargo run --example scripted_window -- IMAGE "QUESTION" "ANSWER"

use std::path::PathBuf;
use std::time::Duration;

use spillway::config::Config;
use spillway::engine::worker;
use spillway::placement::planner::TierBytes;
use spillway::placement::{Mode, Placement, Tier};
use spillway::protocol::{Command, Event, Finish, ModelInfo, ReplyStats, VisionInfo};
use spillway::ui::SpillwayApp;
use spillway::vision::tasks::Task;

struct Scripted {
    app: SpillwayApp,
    frames: usize,
    question: String,
}

impl eframe::App for Scripted {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frames += 1;
        if self.frames == 20 {
            self.app.composer = self.question.clone();
            self.app.send_message();
        }
        self.app.frame_ui(ui);
        ui.ctx().request_repaint_after(Duration::from_millis(50));
    }
}

fn info() -> ModelInfo {
    let n = 36;
    ModelInfo {
        name: "RoboBrain2.0-3B (scripted)".into(),
        path: PathBuf::from("scripted"),
        n_layers: n,
        context_length: 4096,
        layer_bytes: vec![52 << 20; n],
        placement: Placement {
            mode: Mode::Auto,
            layers: [vec![Tier::Disk; 8], vec![Tier::Ram; n - 8]].concat(),
            head: Tier::Ram,
            vision: Some(Tier::Ram),
            weights: TierBytes::default(),
            kv: TierBytes::default(),
            kv_tiers: vec![Tier::Ram; n],
            peak: TierBytes::default(),
            predicted_prompt_tokens_per_sec: 60.0,
            predicted_decode_tokens_per_sec: 6.0,
            experts: Vec::new(),
        },
        budget_notes: vec![],
        gpu_name: None,
        speculation: None,
        kv_types: Default::default(),
        synthetic: false,
        remote: None,
        thinking: None,
        vision: Some(Box::new(VisionInfo {
            processor: spillway::vision::ProcessorConfig::default(),
            thinking: Some(false),
            family: Default::default(),
        })),
    }
}

fn main() -> eframe::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image, question, answer] =
        <[String; 3]>::try_from(args).expect("usage: scripted_window IMAGE QUESTION ANSWER");
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Spillway")
            .with_inner_size([1200.0, 780.0]),
        ..Default::default()
    };
    eframe::run_native(
        "spillway-scripted",
        options,
        Box::new(move |cc| {
            let (link, engine) = worker::channel();
            let data = std::env::temp_dir().join("spillway-scripted");
            let mut app = SpillwayApp::new(link, &Config::defaults().unwrap(), Some(data), None);
            app.attach_file(std::path::Path::new(&image));
            app.task = Task::Pointing;
            let ctx = cc.egui_ctx.clone();
            std::thread::spawn(move || {
                let _ = engine.events.send(Event::Loaded(info()));
                ctx.request_repaint();
                while let Ok(cmd) = engine.commands.recv() {
                    let Command::Generate(r) = cmd else { continue };
                    for piece in answer.split_inclusive(' ') {
                        std::thread::sleep(Duration::from_millis(60));
                        let _ = engine.events.send(Event::Token {
                            req_id: r.req_id,
                            text: piece.to_string(),
                        });
                        ctx.request_repaint();
                    }
                    let _ = engine.events.send(Event::Finished {
                        req_id: r.req_id,
                        finish: Finish::EndOfTurn,
                        stats: ReplyStats {
                            time_to_first_token_secs: 0.0,
                            prompt_tokens: 0,
                            reused_tokens: 0,
                            generated_tokens: answer.split(' ').count(),
                            decode_tokens_per_sec: 0.0,
                            ..ReplyStats::default()
                        },
                    });
                    ctx.request_repaint();
                }
            });
            Ok(Box::new(Scripted {
                app,
                frames: 0,
                question,
            }))
        }),
    )
}
