//! The real window over a scripted engine, for the docs' overlay
//! screenshots (docs/screenshots/take-overlay.sh): a RoboBrain-like model
//! is "loaded", the images are attached in the task given, the question is
//! sent, and the engine answers each request with the next of the scripted
//! answers given on the command line (`|` between them). Nothing is
//! computed: the picture shows how the window draws an answer, not what a
//! model answered.
//!
//!   cargo run --example scripted_window -- [--family 2.5] [--task TASK] \
//!       IMAGE [IMAGE...] "QUESTION" "ANSWER[|ANSWER...]"

use std::path::PathBuf;
use std::time::Duration;

use spillway::config::Config;
use spillway::engine::worker;
use spillway::placement::planner::TierBytes;
use spillway::placement::{Mode, Placement, Tier};
use spillway::protocol::{Command, Event, Finish, ModelInfo, ReplyStats, VisionInfo};
use spillway::ui::SpillwayApp;
use spillway::vision::tasks::{Family, Task};

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

fn info(family: Family) -> ModelInfo {
    let n = 36;
    ModelInfo {
        name: match family {
            Family::RoboBrain2 => "RoboBrain2.0-3B (scripted)",
            Family::RoboBrain25 => "RoboBrain2.5-8B (scripted)",
        }
        .into(),
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
            processor: match family {
                Family::RoboBrain2 => spillway::vision::ProcessorConfig::default(),
                // Qwen3-VL's processor: patch 16.
                Family::RoboBrain25 => spillway::vision::ProcessorConfig::from_json(
                    &serde_json::json!({"patch_size": 16, "min_pixels": 65536, "max_pixels": 16777216}),
                ),
            },
            thinking: Some(false),
            family,
        })),
    }
}

fn main() -> eframe::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut family = Family::RoboBrain2;
    let mut task = Task::Pointing;
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let flag = args.remove(0);
        let value = if args.is_empty() {
            String::new()
        } else {
            args.remove(0)
        };
        match flag.as_str() {
            "--family" if value == "2.5" => family = Family::RoboBrain25,
            "--task" => task = value.parse().expect("a task name"),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(
        args.len() >= 3,
        "usage: scripted_window [--family 2.5] [--task TASK] IMAGE [IMAGE...] QUESTION ANSWER[|ANSWER...]"
    );
    let answers: Vec<String> = args
        .pop()
        .unwrap_or_default()
        .split('|')
        .map(str::to_string)
        .collect();
    let question = args.pop().unwrap_or_default();
    let images = args;
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
            for image in &images {
                app.attach_file(std::path::Path::new(image));
            }
            app.task = task;
            let ctx = cc.egui_ctx.clone();
            std::thread::spawn(move || {
                let _ = engine.events.send(Event::Loaded(info(family)));
                ctx.request_repaint();
                let mut next = answers.iter().cycle();
                while let Ok(cmd) = engine.commands.recv() {
                    let Command::Generate(r) = cmd else { continue };
                    let answer = next.next().cloned().unwrap_or_default();
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
