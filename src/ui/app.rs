//! The window's state and its frame: drain the engine's events (under a
//! small time budget), lay out the panels, apply the commands they return.
//! Conversations are saved after every change that completes something (a
//! sent message, a finished reply, a rename), never mid-stream.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_commonmark::CommonMarkCache;

use super::chat::{self, ChatAction};
use super::images;
use super::placement::{self, PlacementAction};
use super::settings::{self, Settings, SettingsAction};
use crate::chat::history::{Attachment, ChatMessage, Conversation, History};
use crate::config::Config;
use crate::engine::worker::EngineLink;
use crate::placement::Placement;
use crate::protocol::{
    Command, ErrorInfo, ErrorKind, Event, Finish, LoadProgress, LoadRequest, ModelInfo,
    ReplyRequest, ReqId,
};
use crate::telemetry::Snapshot;
use crate::vision::tasks::Task;

/// Events drained per frame stop after this long, so a burst of tokens
/// never stalls drawing.
const EVENT_BUDGET: Duration = Duration::from_millis(2);

/// Which pane fills the middle of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Chat,
    /// The model library (also the welcome screen while no model is
    /// loaded).
    Models,
    Settings,
}

/// The keyboard shortcuts the help overlay (F1) lists.
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("Enter", "send the message"),
    ("Shift+Enter", "a new line in the message"),
    ("Esc", "stop the reply"),
    ("Ctrl+V", "paste an image into the message"),
    ("F1", "show or hide these shortcuts"),
    ("F12", "show the frame time"),
];

/// A reply being streamed.
#[derive(Debug, Clone)]
pub struct Streaming {
    pub req_id: ReqId,
    pub conv_id: String,
    /// When the growing reply was last saved (it is saved at least every
    /// [`STREAM_SAVE_EVERY`], so a crash loses at most that much).
    pub saved_at: Instant,
    /// Prompt tokens computed and in all, while a long prompt is read.
    pub prompt: Option<(usize, usize)>,
    /// A progress estimate under way: one question per frame.
    pub progress: Option<ProgressRun>,
}

/// A progress estimate over a sequence of frames (RoboBrain 2.5): the
/// questions Robo-Dopamine's forward mode asks, sent one after another as
/// replies of their own; each answer's score joins the reply's
/// `progress` and the next question goes out.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressRun {
    /// The task the frames show.
    pub task: String,
    pub mode: crate::vision::tasks::ProgressMode,
    pub steps: Vec<crate::vision::tasks::ProgressStep>,
    /// The step being answered.
    pub at: usize,
}

/// At most this many frames of a folder are judged in a progress estimate.
pub const PROGRESS_FRAMES: usize = 12;

/// How often a reply being streamed is saved as it grows.
pub const STREAM_SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Something shown at the top of the window until dismissed.
#[derive(Debug, Clone, PartialEq)]
pub struct Banner {
    pub title: String,
    pub message: String,
    pub advice: String,
    pub is_error: bool,
}

/// Speeds over time, for the placement panel's plot.
#[derive(Debug, Clone, Default)]
pub struct SpeedHistory {
    pub points: VecDeque<(f64, f64, f64)>,
}

/// How long the window's own work takes per frame: wall time, and the CPU
/// time of the UI thread, which is the app's own work without the time the
/// OS gave to other threads and programs (on a busy 2-core machine the two
/// differ by whole scheduler slices).
#[derive(Debug, Clone, Default)]
pub struct FrameTimes {
    recent_ms: VecDeque<f64>,
    /// The slowest frame (wall time) while a reply streamed.
    pub max_streaming_ms: f64,
    pub streaming_frames: usize,
    /// Wall times of frames while streaming (the first 10,000).
    pub streaming_ms: Vec<f64>,
    /// UI-thread CPU times of the same frames (empty where the platform
    /// has no per-thread clock).
    pub streaming_cpu_ms: Vec<f64>,
}

/// CPU time consumed by the calling thread so far.
pub fn thread_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

impl FrameTimes {
    fn push(&mut self, ms: f64, cpu_ms: Option<f64>, streaming: bool) {
        if self.recent_ms.len() == 120 {
            self.recent_ms.pop_front();
        }
        self.recent_ms.push_back(ms);
        if streaming {
            self.max_streaming_ms = self.max_streaming_ms.max(ms);
            self.streaming_frames += 1;
            if self.streaming_ms.len() < 10_000 {
                self.streaming_ms.push(ms);
                self.streaming_cpu_ms.extend(cpu_ms);
            }
        }
    }

    /// The `q` quantile (0..=1) of frame wall times while streaming.
    pub fn streaming_quantile_ms(&self, q: f64) -> f64 {
        quantile(&self.streaming_ms, q)
    }

    /// The `q` quantile of the UI thread's CPU time per frame while
    /// streaming; the wall-time quantile where there is no thread clock.
    pub fn streaming_cpu_quantile_ms(&self, q: f64) -> f64 {
        if self.streaming_cpu_ms.is_empty() {
            self.streaming_quantile_ms(q)
        } else {
            quantile(&self.streaming_cpu_ms, q)
        }
    }

    pub fn mean_ms(&self) -> f64 {
        self.recent_ms.iter().sum::<f64>() / self.recent_ms.len().max(1) as f64
    }
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

pub struct SpillwayApp {
    pub link: EngineLink,
    pub history: Option<History>,
    pub conversations: Vec<Conversation>,
    /// Index into `conversations`.
    pub current: usize,
    pub composer: String,
    pub streaming: Option<Streaming>,
    pub model: Option<ModelInfo>,
    pub loading: Option<LoadProgress>,
    pub banners: Vec<Banner>,
    pub telemetry: Option<Snapshot>,
    pub speeds: SpeedHistory,
    pub settings: Settings,
    settings_path: Option<PathBuf>,
    pub preview: Option<Result<Placement, ErrorInfo>>,
    pub view: View,
    pub engine_stopped: Option<String>,
    pub frame_times: FrameTimes,
    pub show_frame_times: bool,
    /// The load under way, to cancel.
    loading_id: Option<ReqId>,
    fonts_installed: bool,
    pub chat_state: chat::ChatState,
    md_cache: CommonMarkCache,
    started: Instant,
    /// Images attached to the message being written.
    pub attachments: Vec<Attachment>,
    /// The RoboBrain task the next message is sent in.
    pub task: Task,
    /// How the progress task asks about its frames.
    pub progress_mode: crate::vision::tasks::ProgressMode,
    /// Let a model that can think (Qwen3, RoboBrain 7B/32B) think first.
    pub think: bool,
    pub textures: images::Textures,
    attachments_dir: PathBuf,
    /// Image files being read and checked off the UI thread, in the order
    /// they were attached.
    attaching: Vec<std::thread::JoinHandle<Result<Attachment, String>>>,
    /// The converted-model cache and what it holds (bytes, files), read at
    /// start, after each load and after clearing.
    pub cache_dir: PathBuf,
    pub cache_usage: (u64, usize),
    /// Asks the window to repaint (given to each engine it starts).
    pub wake: std::sync::Arc<dyn Fn() + Send + Sync>,
    /// The server's model list being fetched (Settings → Engine).
    listing: Option<std::thread::JoinHandle<Result<Vec<String>, String>>>,
    /// The OpenAI API the window serves (Settings → API server).
    pub api: Option<ApiServer>,
    pub api_error: Option<String>,
    /// Recommended models, the Hub's search, the models on disk.
    pub library: super::models::LibraryState,
    /// The window title last asked for.
    pub title: String,
    /// The keyboard shortcuts overlay (F1) and the About box.
    pub show_help: bool,
    pub show_about: bool,
    /// The theme and text size applied to the context.
    applied_look: Option<(String, f32)>,
    /// The About box's readings (GPU and driver), made once when opened.
    pub about: Option<AboutInfo>,
}

/// What the About box shows.
#[derive(Debug, Clone, PartialEq)]
pub struct AboutInfo {
    pub version: String,
    pub isa: String,
    pub cpu_features: Vec<String>,
    pub gpus: Vec<String>,
    pub driver: Option<String>,
    /// Why no GPU is listed.
    pub gpu_note: Option<String>,
}

impl AboutInfo {
    pub fn read() -> Self {
        let machine = crate::telemetry::machine::Machine::new();
        AboutInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            isa: crate::kernels::isa::active().name().to_string(),
            cpu_features: crate::kernels::isa::cpu_features(),
            gpus: machine
                .gpus()
                .iter()
                .map(|g| {
                    format!(
                        "{} ({})",
                        g.name,
                        crate::placement::planner::human(g.total_bytes)
                    )
                })
                .collect(),
            driver: machine.driver_version(),
            gpu_note: machine.gpu_note().map(str::to_string),
        }
    }
}

/// The API server the window runs over its own engine link.
pub struct ApiServer {
    pub dispatch: std::sync::Arc<crate::serve::Dispatch>,
    pub url: String,
    _running: crate::serve::Running,
}

impl SpillwayApp {
    /// The app over an engine link; `data_dir` holds the history,
    /// `config_dir` the user's settings (none: nothing is saved).
    pub fn new(
        link: EngineLink,
        config: &Config,
        data_dir: Option<PathBuf>,
        config_dir: Option<PathBuf>,
    ) -> Self {
        let mut banners = Vec::new();
        let library = super::models::LibraryState::new(data_dir.clone());
        let history = data_dir.and_then(|d| match History::open(d.join("conversations")) {
            Ok(h) => Some(h),
            Err(e) => {
                banners.push(Banner::error("History is not saved", &e.to_string(), ""));
                None
            }
        });
        let mut conversations = Vec::new();
        if let Some(h) = &history {
            let (convs, damaged) = h.load_all();
            conversations = convs;
            for d in damaged {
                banners.push(Banner::error(
                    "A saved conversation could not be read",
                    &format!("{} was skipped: {}", d.path.display(), d.reason),
                    "The file is left as it is; the other conversations are loaded.",
                ));
            }
        }
        let settings_path = config_dir.map(|d| d.join("settings.yaml"));
        let mut settings_writable = true;
        let settings = match settings_path.as_deref() {
            Some(p) => match Settings::load(p, config) {
                Ok(s) => s,
                Err(e) => {
                    // The unreadable file is kept aside before defaults can
                    // be saved over it.
                    let kept = match super::settings::keep_aside(p) {
                        Ok(to) => format!(
                            "The defaults are in use; your file is kept as {}.",
                            to.display()
                        ),
                        Err(err) => {
                            settings_writable = false;
                            format!(
                                "The defaults are in use; your file could not be kept aside ({err}), so settings are not saved over it this session."
                            )
                        }
                    };
                    banners.push(Banner::error("Your settings could not be read", &e, &kept));
                    Settings::from_config(config)
                }
            },
            None => Settings::from_config(config),
        };
        let settings_path = settings_path.filter(|_| settings_writable);
        if conversations.is_empty() {
            conversations.push(Conversation::new(&settings.system_prompt));
        }
        let attachments_dir = images::attachments_dir(history.as_ref().map(History::dir));
        let cache_dir = crate::weights::convert::cache_dir();
        // Conversions a crash interrupted leave temporaries; they go now.
        crate::weights::convert::clean_stale(&cache_dir);
        let mut app = SpillwayApp {
            link,
            history,
            conversations,
            current: 0,
            composer: String::new(),
            streaming: None,
            model: None,
            loading: None,
            banners,
            telemetry: None,
            speeds: SpeedHistory::default(),
            settings,
            settings_path,
            preview: None,
            view: View::Chat,
            engine_stopped: None,
            frame_times: FrameTimes::default(),
            show_frame_times: false,
            loading_id: None,
            fonts_installed: false,
            chat_state: chat::ChatState::default(),
            md_cache: CommonMarkCache::default(),
            started: Instant::now(),
            attachments: Vec::new(),
            task: Task::General,
            progress_mode: Default::default(),
            think: false,
            textures: images::Textures::default(),
            attachments_dir,
            attaching: Vec::new(),
            cache_usage: crate::weights::convert::cache_usage(&cache_dir),
            cache_dir,
            wake: std::sync::Arc::new(|| {}),
            listing: None,
            api: None,
            api_error: None,
            library,
            title: "Spillway".into(),
            show_help: false,
            show_about: false,
            applied_look: None,
            about: None,
        };
        if let Some(p) = app.library.catalogue_problem.clone() {
            app.banners
                .push(Banner::error("Your model catalogue was not used", &p, ""));
        }
        // Serving was on when the window last closed.
        app.serve_api();
        app
    }

    /// Attaches an image file to the message being written (a copy is
    /// kept with the history); a file that is not a readable image is a
    /// banner.
    ///
    /// The file is read (up to the size an image can be) and decoded on a
    /// thread of its own, so a large or slow file never stalls the window;
    /// it joins the composer when ready ([`SpillwayApp::poll_attaching`]).
    pub fn attach_file(&mut self, path: &std::path::Path) {
        let (path, dir) = (path.to_path_buf(), self.attachments_dir.clone());
        let job = std::thread::Builder::new()
            .name("attach".into())
            .spawn(move || images::attach_file(&path, &dir));
        match job {
            Ok(j) => self.attaching.push(j),
            Err(e) => self.attached(Err(format!("cannot start reading the image: {e}"))),
        }
    }

    /// Attaches a folder's frames in name order (at most
    /// [`PROGRESS_FRAMES`], evenly spread, the first and last among them).
    pub fn attach_frames(&mut self, dir: &std::path::Path) {
        match crate::vision::list_frames(dir) {
            Ok(all) => {
                let picked = crate::vision::tasks::sample_frames(all.len(), PROGRESS_FRAMES);
                if picked.len() < all.len() {
                    self.banners.push(Banner::notice(
                        "Frames picked",
                        &format!(
                            "{} of the folder's {} frames, evenly spread, the first and the last among them.",
                            picked.len(),
                            all.len()
                        ),
                    ));
                }
                for i in picked {
                    self.attach_file(&all[i]);
                }
            }
            Err(e) => self.banners.push(Banner::error(
                "The frames were not attached",
                &e,
                "Pick a folder of PNG, JPEG, WebP or BMP frames.",
            )),
        }
    }

    fn attached(&mut self, r: Result<Attachment, String>) {
        match r {
            Ok(a) => self.attachments.push(a),
            Err(e) => self.banners.push(Banner::error(
                "The image was not attached",
                &e,
                "Attach a PNG, JPEG, WebP, BMP or GIF file.",
            )),
        }
    }

    /// Takes the images that finished reading (all of them, waiting, when
    /// `wait`), in the order they were attached.
    pub fn poll_attaching(&mut self, wait: bool) {
        while let Some(j) = self.attaching.first() {
            if !wait && !j.is_finished() {
                break;
            }
            let j = self.attaching.remove(0);
            let r = j
                .join()
                .unwrap_or_else(|_| Err("reading the image failed unexpectedly".into()));
            self.attached(r);
        }
    }

    /// Saves reply `index`'s shapes drawn on its question's image.
    pub fn save_annotated(&mut self, index: usize) {
        let conv = &self.conversations[self.current];
        let Some(reply) = conv.messages.get(index) else {
            return;
        };
        let Some(q) = conv.messages[..index]
            .iter()
            .rev()
            .find(|q| q.role == "user")
        else {
            return;
        };
        let Some(shapes) = images::answer_shapes(q, &reply.text, &self.image_processor()) else {
            return;
        };
        match images::save_annotated(&q.images[0], &shapes, self.settings.intrinsics.as_ref()) {
            Ok(Some(out)) => self.banners.push(Banner {
                title: "Annotated image saved".into(),
                message: out.display().to_string(),
                advice: String::new(),
                is_error: false,
            }),
            Ok(None) => {}
            Err(e) => self
                .banners
                .push(Banner::error("The annotated image was not saved", &e, "")),
        }
    }

    /// Attaches a pasted image.
    pub fn attach_pasted(&mut self, img: &egui::ColorImage) {
        match images::attach_pasted(img, &self.attachments_dir) {
            Ok(a) => self.attachments.push(a),
            Err(e) => self
                .banners
                .push(Banner::error("The pasted image was not attached", &e, "")),
        }
    }

    /// The image processor sizes use: the loaded model's, bounded by the
    /// settings' max pixels.
    pub fn image_processor(&self) -> crate::vision::ProcessorConfig {
        let model = self
            .model
            .as_ref()
            .and_then(|m| m.vision.as_ref())
            .map(|v| &v.processor);
        images::processor(model, self.settings.max_image_pixels)
    }

    /// Whether the loaded model thinks when asked (Qwen3, RoboBrain
    /// 7B/32B).
    pub fn model_can_think(&self) -> bool {
        self.model
            .as_ref()
            .and_then(|m| m.thinking.or(m.vision.as_ref().and_then(|v| v.thinking)))
            .unwrap_or(false)
    }

    /// The loaded vision model's RoboBrain generation (2.0's for others).
    pub fn family(&self) -> crate::vision::tasks::Family {
        self.model
            .as_ref()
            .and_then(|m| m.vision.as_ref())
            .map_or_else(Default::default, |v| v.family)
    }

    pub fn current_conversation(&self) -> &Conversation {
        &self.conversations[self.current]
    }

    /// Asks the engine to load `path` with the current settings.
    pub fn load_model(&mut self, path: PathBuf) {
        self.loading = Some(LoadProgress::Reading);
        self.model = None;
        let req_id = self.link.next_id();
        self.loading_id = Some(req_id);
        let req = LoadRequest {
            req_id,
            model_path: path,
            placement: self.settings.placement_request(),
            context_length: self.settings.context_length,
            quant: self.settings.quant(),
            threads: self.settings.threads,
            max_image_pixels: self.settings.max_image_pixels,
            copy_disk_layers: self.settings.copy_disk_layers,
            speculative: self.settings.spec_options(),
            kv_types: self.settings.kv_types(),
        };
        self.send(Command::Load(req));
    }

    /// Stops the load under way at its next layer; the engine answers
    /// `LoadFailed` (cancelled) and holds no model.
    pub fn cancel_load(&mut self) {
        if let Some(id) = self.loading_id.take() {
            self.link.stop(id);
        }
        self.loading = None;
    }

    fn send(&mut self, cmd: Command) {
        if !self.link.send(cmd) && self.engine_stopped.is_none() {
            self.engine_stopped = Some("the engine is not running".into());
        }
    }

    /// Sends the composer's text as a new user message.
    pub fn send_message(&mut self) {
        let text = self.composer.trim().to_string();
        if text.is_empty() || self.streaming.is_some() {
            return;
        }
        // An image still being read belongs to this message.
        self.poll_attaching(true);
        if let Some(problem) = self.image_problem() {
            self.banners.push(problem);
            return;
        }
        self.composer.clear();
        let family = self.family();
        let conv = &mut self.conversations[self.current];
        conv.messages.push(ChatMessage {
            images: std::mem::take(&mut self.attachments),
            task: self.task,
            family,
            ..ChatMessage::user(&text)
        });
        conv.title_from_first_message();
        self.request_reply();
    }

    /// Why the message being written cannot go with its images and task.
    fn image_problem(&self) -> Option<Banner> {
        // A server's model says whether it reads images by answering.
        let vision = self
            .model
            .as_ref()
            .filter(|m| m.remote.is_none())
            .map(|m| m.vision.is_some());
        if !self.attachments.is_empty() && vision == Some(false) {
            return Some(Banner::error(
                "This model does not read images",
                "The loaded model has no vision tower.",
                "Load a vision-language model (Qwen2.5-VL, RoboBrain 2.0), or remove the images.",
            ));
        }
        if let Err(e) = self.task.check_images(self.attachments.len()) {
            let advice = if self.task == Task::Progress {
                "Attach the frames in order (or a folder of frames), or switch the task to general."
            } else {
                "Attach exactly one image, or switch the task to general."
            };
            return Some(Banner::error(
                &format!("The {} task cannot go with these images", self.task),
                &format!("{}{}.", e[..1].to_uppercase(), &e[1..]),
                advice,
            ));
        }
        None
    }

    /// Starts a reply to the current conversation as it stands.
    fn request_reply(&mut self) {
        if self.model.is_none() {
            self.banners.push(Banner::error(
                "No model is loaded",
                "Spillway needs a model to reply.",
                "Open a GGUF file or a model folder in Settings.",
            ));
            self.save_current();
            return;
        }
        let progress = self.conversations[self.current]
            .messages
            .last()
            .filter(|m| m.role == "user" && m.task == Task::Progress)
            .map(|m| {
                let frames: Vec<PathBuf> = m.images.iter().map(|a| a.path.clone()).collect();
                ProgressRun {
                    task: m.text.clone(),
                    mode: self.progress_mode,
                    steps: crate::vision::tasks::progress_steps(&frames, None, self.progress_mode),
                    at: 0,
                }
            });
        if let Some(run) = progress {
            self.start_progress(run);
            return;
        }
        let req_id = self.link.next_id();
        let conv = &mut self.conversations[self.current];
        conv.messages.push(ChatMessage {
            incomplete: true,
            ..ChatMessage::assistant("")
        });
        let mut messages = conv.template_messages();
        // The empty assistant message is the reply being written.
        messages.pop();
        self.streaming = Some(Streaming {
            req_id,
            conv_id: conv.id.clone(),
            saved_at: Instant::now(),
            prompt: None,
            progress: None,
        });
        self.save_current();
        let s = &self.settings;
        let req = ReplyRequest {
            req_id,
            messages,
            max_tokens: s.max_new_tokens,
            sampling: s.sampling(),
            think: self.think && self.model_can_think(),
            max_pixels: Some(s.max_image_pixels),
            stop: Vec::new(),
            ignore_eos: false,
        };
        self.send(Command::Generate(req));
    }

    /// Starts a progress estimate: the reply holds one line per frame and
    /// the progress of each, the first frame's 0.
    fn start_progress(&mut self, run: ProgressRun) {
        if run.steps.is_empty() {
            self.banners.push(Banner::error(
                "No progress to estimate",
                "The progress task needs two or more frames.",
                "Attach the frames in order, or a folder of frames.",
            ));
            return;
        }
        let conv = &mut self.conversations[self.current];
        conv.messages.push(ChatMessage {
            incomplete: true,
            progress: vec![Some(0.0)],
            ..ChatMessage::assistant("")
        });
        let conv_id = conv.id.clone();
        self.send_progress_step(conv_id, run);
    }

    /// Sends the question of `run.at`: the frame it judges named at the
    /// start of a new line of the reply, greedy (a measurement, not a
    /// conversation), each image at Robo-Dopamine's pixel bound.
    fn send_progress_step(&mut self, conv_id: String, run: ProgressRun) {
        let Some(step) = run.steps.get(run.at) else {
            return;
        };
        if let Some(i) = self.conv_index(&conv_id) {
            if let Some(m) = self.conversations[i].messages.last_mut() {
                // A paragraph a frame (markdown joins single lines).
                if !m.text.is_empty() {
                    m.text.push_str("\n\n");
                }
                m.text.push_str(&format!("Frame {}: ", step.frame + 1));
            }
        }
        let req_id = self.link.next_id();
        let req = ReplyRequest {
            req_id,
            messages: vec![crate::vision::tasks::progress_message(&run.task, step)],
            max_tokens: self.settings.max_new_tokens.min(64),
            sampling: crate::model::sampler::SamplingParams::greedy(),
            think: false,
            max_pixels: Some(
                self.settings
                    .max_image_pixels
                    .min(crate::vision::tasks::PROGRESS_MAX_PIXELS),
            ),
            stop: vec!["</score>".into()],
            ignore_eos: false,
        };
        self.streaming = Some(Streaming {
            req_id,
            conv_id,
            saved_at: Instant::now(),
            prompt: None,
            progress: Some(run),
        });
        self.save_current();
        self.send(Command::Generate(req));
    }

    /// A progress question was answered: its score joins the reply (the
    /// line shows it as a percentage) and the next question goes out.
    /// Returns whether the estimate goes on.
    fn progress_answered(&mut self, s: &Streaming, finish: Finish) -> bool {
        let Some(run) = &s.progress else {
            return false;
        };
        let Some(i) = self.conv_index(&s.conv_id) else {
            return false;
        };
        if let Some(m) = self.conversations[i].messages.last_mut() {
            let line_start = m.text.rfind('\n').map_or(0, |k| k + 1);
            let line = m.text[line_start..].to_string();
            let (label, answer) = line.split_once(": ").unwrap_or(("", line.as_str()));
            let score = crate::vision::tasks::parse_score(answer);
            if finish != Finish::Cancelled && finish != Finish::Failed {
                let before = m.progress.iter().rev().find_map(|p| *p).unwrap_or(0.0);
                let now = run.mode.next(before, score);
                let incremental = run.mode == crate::vision::tasks::ProgressMode::Incremental;
                m.progress
                    .push((score.is_some() || incremental).then_some(now));
                let shown = match score {
                    Some(v) if incremental => {
                        format!("{label}: {:+.0}%, progress {:.0}%", v * 100.0, now * 100.0)
                    }
                    Some(v) => format!("{label}: {:.0}%", v * 100.0),
                    None => format!("{label}: no score in \u{201c}{}\u{201d}", answer.trim()),
                };
                m.text.truncate(line_start);
                m.text.push_str(&shown);
            }
        }
        let next = run.at + 1;
        if matches!(finish, Finish::Cancelled | Finish::Failed) || next >= run.steps.len() {
            return false;
        }
        let run = ProgressRun {
            at: next,
            ..run.clone()
        };
        self.send_progress_step(s.conv_id.clone(), run);
        true
    }

    /// Stops the reply being streamed.
    pub fn stop(&mut self) {
        if let Some(s) = &self.streaming {
            self.link.stop(s.req_id);
        }
    }

    /// Replaces the last reply with a new one.
    pub fn regenerate(&mut self) {
        if self.streaming.is_some() {
            return;
        }
        let conv = &mut self.conversations[self.current];
        if conv.messages.last().is_some_and(|m| m.role == "assistant") {
            conv.messages.pop();
        }
        if conv.messages.last().is_some_and(|m| m.role == "user") {
            self.request_reply();
        }
    }

    /// Replaces user message `index` with `text`, drops what followed it,
    /// and asks again.
    pub fn edit_and_resend(&mut self, index: usize, text: &str) {
        if self.streaming.is_some() {
            return;
        }
        let conv = &mut self.conversations[self.current];
        if conv.messages.get(index).is_none_or(|m| m.role != "user") {
            return;
        }
        let original = conv.messages[index].clone();
        conv.messages.truncate(index);
        conv.messages.push(ChatMessage {
            text: text.to_string(),
            ..original
        });
        self.request_reply();
    }

    pub fn new_conversation(&mut self) {
        self.conversations
            .insert(0, Conversation::new(&self.settings.system_prompt));
        self.current = 0;
    }

    pub fn select_conversation(&mut self, index: usize) {
        if index < self.conversations.len() {
            self.current = index;
        }
    }

    pub fn delete_conversation(&mut self, index: usize) {
        if index >= self.conversations.len() {
            return;
        }
        let conv = self.conversations.remove(index);
        if self
            .streaming
            .as_ref()
            .is_some_and(|s| s.conv_id == conv.id)
        {
            self.stop();
        }
        if let Some(h) = &self.history {
            if let Err(e) = h.delete(&conv.id) {
                self.banners
                    .push(Banner::error("Not deleted", &e.to_string(), ""));
            }
        }
        // Its image copies go too, unless another conversation (or the
        // message being written) still uses them. Only files inside the
        // attachments folder are ever removed.
        let in_use: std::collections::HashSet<&std::path::Path> = self
            .conversations
            .iter()
            .flat_map(|c| c.messages.iter())
            .flat_map(|m| m.images.iter())
            .chain(self.attachments.iter())
            .map(|a| a.path.as_path())
            .collect();
        for a in conv.messages.iter().flat_map(|m| m.images.iter()) {
            if !in_use.contains(a.path.as_path()) && a.path.parent() == Some(&self.attachments_dir)
            {
                let _ = std::fs::remove_file(&a.path);
            }
        }
        if self.conversations.is_empty() {
            self.conversations
                .push(Conversation::new(&self.settings.system_prompt));
        }
        self.current = self.current.min(self.conversations.len() - 1);
    }

    pub fn rename_conversation(&mut self, index: usize, title: &str) {
        if let Some(c) = self.conversations.get_mut(index) {
            c.title = title.trim().to_string();
            self.save(index);
        }
    }

    fn save_current(&mut self) {
        self.save(self.current);
    }

    /// Saves conversation `index` (not while it is still empty).
    fn save(&mut self, index: usize) {
        let Some(conv) = self.conversations.get_mut(index) else {
            return;
        };
        let Some(h) = &self.history else { return };
        if conv.messages.is_empty() {
            return;
        }
        conv.updated_secs = crate::chat::history::now_secs();
        if let Err(e) = h.save(conv) {
            self.banners.push(Banner::error(
                "The conversation was not saved",
                &e.to_string(),
                "Free some disk space; Spillway saves again after the next message.",
            ));
        }
    }

    pub fn save_settings(&mut self) {
        if let Some(p) = &self.settings_path {
            if let Err(e) = self.settings.save(p) {
                self.banners
                    .push(Banner::error("Settings were not saved", &e, ""));
            }
        }
    }

    /// Applies every event waiting, within the frame's budget.
    pub fn drain_events(&mut self) {
        let start = Instant::now();
        while start.elapsed() < EVENT_BUDGET {
            match self.link.events.try_recv() {
                // The API's own replies go to their clients.
                Ok(e) if self.api.as_ref().is_some_and(|a| a.dispatch.route(&e)) => {}
                Ok(e) => self.apply_event(e),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    if self.engine_stopped.is_none() {
                        self.engine_stopped = Some("the engine is not running".into());
                    }
                    break;
                }
            }
        }
    }

    fn conv_index(&self, id: &str) -> Option<usize> {
        self.conversations.iter().position(|c| c.id == id)
    }

    pub fn apply_event(&mut self, e: Event) {
        match e {
            Event::LoadProgress(p) => self.loading = Some(p),
            Event::Loaded(info) => {
                self.loading = None;
                self.preview = None;
                // Only a model that loaded is remembered for the next start.
                if info.remote.is_none() {
                    self.settings.remember_model(&info.path);
                }
                self.cache_usage = crate::weights::convert::cache_usage(&self.cache_dir);
                self.save_settings();
                if info.remote.is_none() {
                    let placement = crate::library::disk::placement_summary(&info.placement.layers);
                    if let Err(e) = self
                        .library
                        .records
                        .used(&info.path, &info.name, &placement)
                    {
                        eprintln!("spillway: the library's record of uses was not saved: {e}");
                    }
                    self.library.refresh_library();
                }
                self.model = Some(info);
                // A task the new model's family lacks (2.0's affordance on
                // 2.5) falls back to general.
                if !self.family().tasks().contains(&self.task) {
                    self.task = Task::General;
                }
            }
            // A cancelled load was cleared when Cancel was clicked; another
            // load may be under way since.
            Event::LoadFailed(err) if err.kind == ErrorKind::Cancelled => {}
            Event::LoadFailed(err) => {
                self.loading = None;
                self.loading_id = None;
                self.banners
                    .push(Banner::from_error("The model did not load", &err));
            }
            Event::Unloaded => self.model = None,
            Event::Speculation(s) => {
                self.loading = None;
                if let Some(m) = &mut self.model {
                    m.speculation = s.map(Box::new);
                }
            }
            Event::Started { .. } => {}
            Event::PromptProgress {
                req_id,
                done,
                total,
            } => {
                if let Some(s) = self.streaming.as_mut().filter(|s| s.req_id == req_id) {
                    s.prompt = Some((done, total));
                }
            }
            Event::Token { req_id, text } => {
                let Some(s) = self.streaming.as_ref().filter(|s| s.req_id == req_id) else {
                    return;
                };
                let due = s.saved_at.elapsed() >= STREAM_SAVE_EVERY;
                if let Some(i) = self.conv_index(&s.conv_id) {
                    if let Some(m) = self.conversations[i].messages.last_mut() {
                        m.text.push_str(&text);
                        // Until it finishes, the saved reply is incomplete.
                        m.incomplete = true;
                    }
                    if due {
                        self.save(i);
                        if let Some(s) = self.streaming.as_mut() {
                            s.saved_at = Instant::now();
                        }
                    }
                }
            }
            Event::Finished {
                req_id,
                finish,
                stats,
            } => {
                let Some(s) = self.streaming.take_if(|s| s.req_id == req_id) else {
                    return;
                };
                if self.progress_answered(&s, finish) {
                    return;
                }
                if let Some(spec) = self.model.as_mut().and_then(|m| m.speculation.as_mut()) {
                    spec.proposed += stats.draft_proposed as u64;
                    spec.accepted += stats.draft_accepted as u64;
                }
                if let Some(i) = self.conv_index(&s.conv_id) {
                    let conv = &mut self.conversations[i];
                    if let Some(m) = conv.messages.last_mut() {
                        m.incomplete = !matches!(finish, Finish::EndOfTurn | Finish::Length);
                        if finish != Finish::Failed {
                            m.stats = Some(stats);
                        }
                    }
                    if finish == Finish::Failed
                        && conv.messages.last().is_some_and(|m| m.text.is_empty())
                    {
                        conv.messages.pop();
                    }
                    self.save(i);
                }
            }
            Event::ReplyFailed { error, .. } => {
                self.banners
                    .push(Banner::from_error("The reply failed", &error));
            }
            Event::Preview(p) => self.preview = Some(p),
            Event::Placed(p) => {
                if let Some(m) = &mut self.model {
                    m.placement = p;
                }
                self.preview = None;
            }
            Event::Notice(n) => self.banners.push(Banner::notice("Placement", &n)),
            Event::Telemetry(s) => {
                let t = self.started.elapsed().as_secs_f64();
                if self.speeds.points.len() == 300 {
                    self.speeds.points.pop_front();
                }
                self.speeds
                    .points
                    .push_back((t, s.prompt_tokens_per_sec, s.decode_tokens_per_sec));
                self.telemetry = Some(*s);
            }
            Event::Stopped { error } => {
                // The engine crashed mid-reply: what came is kept.
                if let Some(i) = self
                    .streaming
                    .take()
                    .and_then(|st| self.conv_index(&st.conv_id))
                {
                    self.save(i);
                }
                self.loading = None;
                self.engine_stopped =
                    Some(error.unwrap_or_else(|| "the engine has stopped".into()));
            }
        }
    }

    /// Starts a fresh engine after the old one stopped, reloading the model
    /// (or reconnecting to the server's).
    pub fn restart_engine(&mut self, link: EngineLink) {
        self.link = link;
        self.engine_stopped = None;
        self.model = None;
        // The API follows the new engine.
        if self.api.is_some() {
            self.serve_api();
        }
        if self.on_server() {
            self.load_model(PathBuf::from(self.settings.server_model.clone()));
        } else if let Some(p) = self.settings.last_model.clone() {
            self.load_model(p);
        }
    }

    /// Whether the chat goes through an OpenAI-compatible server.
    pub fn on_server(&self) -> bool {
        self.settings.engine == "server" && !self.settings.server_model.is_empty()
    }

    /// The engine the settings name, started in place of the one running
    /// (the conversations stay; a reply under way ends as stopped).
    pub fn switch_engine(&mut self) {
        if let Some(s) = &self.streaming {
            self.link.stop(s.req_id);
        }
        self.link.send(Command::Shutdown);
        if let Some(i) = self
            .streaming
            .take()
            .and_then(|st| self.conv_index(&st.conv_id))
        {
            self.save(i);
        }
        let link = if self.on_server() {
            let s = &self.settings;
            if let Err(why) = crate::ui::keys::store(&s.server_url, &s.server_key) {
                if !s.server_key.is_empty() {
                    self.banners.push(Banner::notice(
                        "The API key is not saved",
                        &format!(
                            "No keyring is available ({why}); the key is kept until Spillway closes."
                        ),
                    ));
                }
            }
            crate::remote::spawn_worker(self.remote(), self.wake.clone())
        } else {
            crate::engine::worker::spawn(self.wake.clone())
        };
        self.restart_engine(link);
    }

    /// The server the settings name.
    fn remote(&self) -> crate::remote::Remote {
        let s = &self.settings;
        crate::remote::Remote::new(s.server_url.trim(), Some(s.server_key.clone()))
    }

    /// Fetches the server's model list off the UI thread.
    pub fn list_server_models(&mut self) {
        let remote = self.remote();
        let wake = self.wake.clone();
        let job = std::thread::Builder::new()
            .name("list-models".into())
            .spawn(move || {
                let r = remote.models().map_err(|e| format!("{e}. {}", e.advice()));
                wake();
                r
            });
        match job {
            Ok(j) => self.listing = Some(j),
            Err(e) => self.banners.push(Banner::error(
                "The models were not listed",
                &e.to_string(),
                "",
            )),
        }
    }

    /// The model list, once fetched.
    pub fn poll_listing(&mut self, wait: bool) {
        if !self
            .listing
            .as_ref()
            .is_some_and(|j| wait || j.is_finished())
        {
            return;
        }
        let Some(job) = self.listing.take() else {
            return;
        };
        match job.join() {
            Ok(Ok(models)) => {
                if !models.contains(&self.settings.server_model) {
                    self.settings.server_model = models.first().cloned().unwrap_or_default();
                }
                self.settings.server_models = models;
            }
            Ok(Err(e)) => {
                self.banners
                    .push(Banner::error("The server's models were not listed", &e, ""))
            }
            Err(_) => {}
        }
    }

    /// Keyboard shortcuts that work anywhere: Esc stops generation.
    fn shortcuts(&mut self, ctx: &egui::Context) {
        if ctx.input(|i| i.key_pressed(egui::Key::Escape)) {
            self.stop();
        }
        if ctx.input(|i| i.key_pressed(egui::Key::F12)) {
            self.show_frame_times = !self.show_frame_times;
        }
        if ctx.input(|i| i.key_pressed(egui::Key::F1)) {
            self.show_help = !self.show_help;
        }
        // Images dropped on the window or pasted attach to the message.
        let (dropped, pasted) = ctx.input(|i| {
            let dropped: Vec<PathBuf> = i
                .raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect();
            let pasted: Vec<std::sync::Arc<egui::ColorImage>> = i
                .events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::PasteImage(img) => Some(img.clone()),
                    _ => None,
                })
                .collect();
            (dropped, pasted)
        });
        for p in dropped {
            // A model dropped on the window is opened; a folder in the
            // progress task is its frames; anything else is an image to
            // attach.
            if p.is_dir() && self.task == Task::Progress && self.model.is_some() {
                self.attach_frames(&p);
                continue;
            }
            let model = p.is_dir()
                || p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
            if model {
                self.load_model(p);
            } else {
                self.attach_file(&p);
            }
        }
        for img in pasted {
            self.attach_pasted(&img);
        }
    }

    /// One frame: events in, panels drawn, their actions applied.
    pub fn frame_ui(&mut self, ui: &mut egui::Ui) {
        let start = Instant::now();
        let cpu_start = thread_cpu_time();
        if !self.fonts_installed {
            super::install_fonts(ui.ctx());
            self.fonts_installed = true;
        }
        self.drain_events();
        self.poll_attaching(false);
        self.poll_listing(false);
        self.poll_library(false);
        self.apply_look(ui.ctx());
        self.update_title(ui.ctx());
        if self.library.busy() {
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(100));
        }
        if !self.attaching.is_empty() {
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(30));
        }
        self.shortcuts(ui.ctx());
        let mut chat_actions = Vec::new();
        let mut settings_actions = Vec::new();
        let mut placement_actions = Vec::new();
        let mut models_actions = Vec::new();

        egui::Panel::top("top").show(ui, |ui| {
            self.top_bar_ui(ui);
        });
        egui::Panel::left("conversations")
            .default_size(230.0)
            .show(ui, |ui| {
                chat_actions.extend(chat::conversation_list_ui(ui, self));
            });
        egui::Panel::right("placement")
            .default_size(320.0)
            .show(ui, |ui| {
                placement_actions.extend(placement::panel_ui(ui, self));
            });
        let welcome = self.shows_welcome();
        let quant = self.settings.quant();
        egui::CentralPanel::default_margins().show(ui, |ui| match self.view {
            View::Chat if welcome => {
                models_actions.extend(super::models::models_ui(ui, &mut self.library, true, quant));
            }
            View::Models => {
                models_actions.extend(super::models::models_ui(
                    ui,
                    &mut self.library,
                    false,
                    quant,
                ));
            }
            View::Chat => {
                let mut cache = std::mem::take(&mut self.md_cache);
                chat_actions.extend(chat::chat_ui(ui, self, &mut cache));
                self.md_cache = cache;
            }
            View::Settings => {
                let api = self.api_view();
                settings_actions.extend(settings::settings_ui(
                    ui,
                    &mut self.settings,
                    self.cache_usage,
                    &api,
                ))
            }
        });

        for a in chat_actions {
            self.apply_chat(a);
        }
        for a in settings_actions {
            self.apply_settings(a);
        }
        for a in placement_actions {
            self.apply_placement(a);
        }
        for a in models_actions {
            self.apply_models(a);
        }
        self.help_ui(ui.ctx());
        self.about_ui(ui.ctx());
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let cpu_ms = cpu_start
            .zip(thread_cpu_time())
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64() * 1e3);
        self.frame_times.push(ms, cpu_ms, self.streaming.is_some());
    }

    fn top_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.selectable_value(&mut self.view, View::Chat, "Chat");
            ui.selectable_value(&mut self.view, View::Models, "Models");
            ui.selectable_value(&mut self.view, View::Settings, "Settings");
            ui.separator();
            if let Some(f) = &self.library.fetching {
                let p = f.progress.lock().ok().and_then(|g| g.clone());
                let frac = p
                    .as_ref()
                    .map_or(0.0, |d| d.done_bytes as f32 / d.total_bytes.max(1) as f32);
                ui.label(format!("Downloading {}", f.name));
                ui.add(
                    egui::ProgressBar::new(frac)
                        .desired_width(160.0)
                        .show_percentage(),
                )
                .on_hover_text(
                    p.as_ref()
                        .map(super::models::progress_text)
                        .unwrap_or_default(),
                );
                if ui.button("Cancel").clicked() {
                    self.library.cancel_fetch();
                }
                ui.separator();
            }
            match (&self.model, &self.loading) {
                (_, Some(p)) => {
                    ui.label(format!("Loading: {}", p.label()));
                    ui.add(egui::ProgressBar::new(p.fraction()).desired_width(160.0));
                    if ui.button("Cancel").clicked() {
                        self.cancel_load();
                    }
                }
                (Some(m), None) => {
                    ui.label(format!("Model: {}", m.name));
                    if m.synthetic {
                        ui.colored_label(
                            ui.visuals().warn_fg_color,
                            crate::weights::synth::SYNTHETIC_NOTICE,
                        );
                    }
                }
                (None, None) => {
                    ui.label("No model loaded — pick one under Models");
                }
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui.small_button("About").clicked() {
                    self.show_about = true;
                }
                if ui
                    .small_button("Help")
                    .on_hover_text("Keyboard shortcuts (F1)")
                    .clicked()
                {
                    self.show_help = !self.show_help;
                }
            });
            if self.show_frame_times {
                ui.separator();
                ui.monospace(format!(
                    "frame {:.2} ms (max while streaming {:.2} ms)",
                    self.frame_times.mean_ms(),
                    self.frame_times.max_streaming_ms
                ));
            }
        });
        if let Some(why) = self.engine_stopped.clone() {
            ui.horizontal(|ui| {
                ui.colored_label(
                    ui.visuals().error_fg_color,
                    format!("Engine stopped: {why}"),
                );
                if ui.button("Restart engine").clicked() {
                    self.switch_engine();
                }
            });
        }
        let mut dismissed = None;
        for (i, b) in self.banners.iter().enumerate() {
            ui.horizontal_wrapped(|ui| {
                let color = if b.is_error {
                    ui.visuals().error_fg_color
                } else {
                    ui.visuals().warn_fg_color
                };
                ui.colored_label(color, egui::RichText::new(&b.title).strong());
                ui.label(&b.message);
                if !b.advice.is_empty() {
                    ui.label(egui::RichText::new(&b.advice).italics());
                }
                if ui.small_button("Dismiss").clicked() {
                    dismissed = Some(i);
                }
            });
        }
        if let Some(i) = dismissed {
            self.banners.remove(i);
        }
    }

    fn apply_chat(&mut self, a: ChatAction) {
        match a {
            ChatAction::Send => self.send_message(),
            ChatAction::Stop => self.stop(),
            ChatAction::Regenerate => self.regenerate(),
            ChatAction::EditResend { index, text } => self.edit_and_resend(index, &text),
            ChatAction::New => self.new_conversation(),
            ChatAction::Select(i) => self.select_conversation(i),
            ChatAction::Delete(i) => self.delete_conversation(i),
            ChatAction::Rename { index, title } => self.rename_conversation(index, &title),
            ChatAction::AttachDialog => {
                let files = rfd::FileDialog::new()
                    .add_filter("Images", &["png", "jpg", "jpeg", "webp", "bmp", "gif"])
                    .pick_files();
                for f in files.unwrap_or_default() {
                    self.attach_file(&f);
                }
            }
            ChatAction::AttachFolder => {
                if let Some(dir) = rfd::FileDialog::new().pick_folder() {
                    self.attach_frames(&dir);
                }
            }
            ChatAction::RemoveAttachment(k) => {
                if k < self.attachments.len() {
                    self.attachments.remove(k);
                }
            }
            ChatAction::SaveAnnotated(i) => self.save_annotated(i),
            ChatAction::SystemPrompt(text) => {
                self.conversations[self.current].system_prompt = text;
                self.save_current();
            }
        }
    }

    fn apply_settings(&mut self, a: SettingsAction) {
        match a {
            SettingsAction::Open(path) => self.load_model(path),
            SettingsAction::Changed => self.save_settings(),
            SettingsAction::PreviewPlacement => {
                let req = self.settings.placement_request();
                self.send(Command::Preview(req));
            }
            SettingsAction::ApplyPlacement => {
                self.save_settings();
                let req = self.settings.placement_request();
                self.send(Command::Apply(req));
            }
            SettingsAction::ApplySpeculation => {
                self.save_settings();
                let opts = self.settings.spec_options();
                self.send(Command::Speculate(opts));
            }
            SettingsAction::ServeApi => self.serve_api(),
            SettingsAction::ListServerModels => self.list_server_models(),
            SettingsAction::SwitchEngine => self.switch_engine(),
            SettingsAction::ClearCache => {
                let freed = crate::weights::convert::clear_cache(&self.cache_dir);
                self.cache_usage = crate::weights::convert::cache_usage(&self.cache_dir);
                self.banners.push(Banner::notice(
                    "Cache cleared",
                    &format!(
                        "{} of converted models removed from {}; a model converts again when next loaded.",
                        crate::placement::planner::human(freed),
                        self.cache_dir.display()
                    ),
                ));
            }
        }
    }

    /// Starts, restarts or stops the API server as the settings say. It
    /// shares the loaded model: its requests join the chat's queue.
    pub fn serve_api(&mut self) {
        // The old server stops first (it may hold the port).
        self.api = None;
        self.api_error = None;
        if !self.settings.serve_api {
            return;
        }
        let dispatch =
            crate::serve::Dispatch::new(self.link.submit.clone(), crate::serve::DEFAULT_QUEUE);
        if let Some(m) = &self.model {
            dispatch.route(&Event::Loaded(m.clone()));
        }
        if let Some(t) = &self.telemetry {
            dispatch.route(&Event::Telemetry(Box::new(t.clone())));
        }
        let s = &self.settings;
        let g = &s.sampling();
        let opts = crate::serve::ServeOptions {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], s.serve_port)),
            api_key: Some(s.serve_key.clone()).filter(|k| !k.is_empty()),
            allow_remote_images: false,
            max_body_bytes: crate::serve::DEFAULT_MAX_BODY_BYTES,
            stream_interval: Some(std::time::Duration::from_millis(
                crate::serve::DEFAULT_STREAM_INTERVAL_MS,
            )),
            defaults: crate::serve::openai::Defaults {
                temperature: g.temperature,
                top_k: g.top_k,
                top_p: g.top_p,
                min_p: g.min_p,
                repetition_penalty: g.repetition_penalty,
            },
        };
        match crate::serve::start(dispatch.clone(), opts) {
            Ok(running) => {
                self.api = Some(ApiServer {
                    dispatch,
                    url: format!("http://{}/v1", running.addr),
                    _running: running,
                });
            }
            Err(e) => {
                self.api_error = Some(format!(
                    "The API could not start on port {}: {e}. Choose another port.",
                    s.serve_port
                ));
            }
        }
    }

    pub fn api_view(&self) -> settings::ApiView {
        settings::ApiView {
            url: self.api.as_ref().map(|a| a.url.clone()),
            error: self.api_error.clone(),
            in_flight: self.api.as_ref().map_or(0, |a| a.dispatch.in_flight()),
        }
    }

    /// Whether the chat pane shows the welcome screen: no model, none
    /// loading, no server.
    pub fn shows_welcome(&self) -> bool {
        self.model.is_none()
            && self.loading.is_none()
            && !self.on_server()
            && self.engine_stopped.is_none()
    }

    /// Collects the library's finished work; a finished download opens.
    pub fn poll_library(&mut self, wait: bool) {
        let Some((name, r)) = self.library.poll(wait) else {
            return;
        };
        match r {
            Ok(path) => {
                self.view = View::Chat;
                self.load_model(path);
            }
            Err(e) if e == "download cancelled" => self.banners.push(Banner::notice(
                "Download cancelled",
                &format!("{name}: what came is kept; downloading again resumes from there."),
            )),
            Err(e) => self.banners.push(Banner::error(
                &format!("{name} was not downloaded"),
                &e,
                "Try again: the download resumes where it stopped.",
            )),
        }
    }

    /// Fetches the catalogue's starter model (once per settings file) and
    /// opens it; a copy already on disk opens at once.
    pub fn start_starter(&mut self) {
        let Some(i) = self.library.catalogue.models.iter().position(|m| m.starter) else {
            return;
        };
        self.settings.starter_fetched = true;
        self.save_settings();
        if let Some(p) = self.library.local_copy(i, 0).cloned() {
            self.load_model(p);
            return;
        }
        if let Err(e) = self.library.start_fetch(i, 0) {
            self.banners.push(Banner::error(
                "The starter model was not downloaded",
                &e,
                "",
            ));
        }
    }

    fn apply_models(&mut self, a: super::models::ModelsAction) {
        use super::models::ModelsAction as A;
        match a {
            A::Open(p) => {
                self.view = View::Chat;
                self.load_model(p);
            }
            A::Fetch { model, file } => {
                if let Err(e) = self.library.start_fetch(model, file) {
                    self.banners.push(Banner::error("Not downloaded", &e, ""));
                }
            }
            A::CancelFetch => self.library.cancel_fetch(),
            A::Search => self.library.start_search(),
            A::Expand(repo) => {
                let q = self.settings.quant();
                // A checkpoint stored as-is is planned as its 4-bit
                // conversion would be only when the setting says so.
                self.library.expand(repo, q);
            }
            A::Delete(i) => {
                self.library.confirm_delete = None;
                let Some(m) = self.library.local.get(i).cloned() else {
                    return;
                };
                if self.model.as_ref().is_some_and(|l| l.path == m.path) {
                    self.banners.push(Banner::error(
                        "Not deleted",
                        &format!("{} is loaded; load another model first.", m.name),
                        "",
                    ));
                    return;
                }
                match crate::library::disk::delete(&m, &mut self.library.records) {
                    Ok(freed) => self.banners.push(Banner::notice(
                        "Deleted",
                        &format!(
                            "{} removed; {} freed.",
                            m.name,
                            crate::placement::planner::human(freed)
                        ),
                    )),
                    Err(e) => self.banners.push(Banner::error("Not deleted", &e, "")),
                }
                self.library.refresh_library();
                self.cache_usage = crate::weights::convert::cache_usage(&self.cache_dir);
            }
            A::Forget(i) => {
                if let Some(m) = self.library.local.get(i).cloned() {
                    let _ = self.library.records.forget(&m.path);
                    self.library.refresh_library();
                }
            }
            A::RefreshLibrary => self.library.refresh_library(),
            A::RefreshVerdicts => self.read_machine(),
        }
    }

    /// Reads the machine for the library's verdicts (on a thread).
    pub fn read_machine(&mut self) {
        let req = self.settings.placement_request();
        self.library.context = self.settings.context_length;
        self.library.kv_types = self.settings.kv_types();
        self.library
            .read_machine(req.budget, self.settings.offload_folder.clone());
    }

    /// The window title names the loaded model (the task switcher shows
    /// it).
    fn update_title(&mut self, ctx: &egui::Context) {
        let title = match (&self.model, &self.loading) {
            (Some(m), _) => format!("Spillway — {}", m.name),
            (None, Some(_)) => "Spillway — loading…".to_string(),
            (None, None) => "Spillway".to_string(),
        };
        if title != self.title {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title = title;
        }
    }

    /// The theme and text size of the settings.
    fn apply_look(&mut self, ctx: &egui::Context) {
        let scale = self.settings.text_scale.clamp(0.8, 1.6);
        // Compared in place: no allocation on a frame that changes nothing.
        if self
            .applied_look
            .as_ref()
            .is_some_and(|(t, s)| *t == self.settings.theme && *s == scale)
        {
            return;
        }
        let want = (self.settings.theme.clone(), scale);
        ctx.set_theme(match want.0.as_str() {
            "light" => egui::ThemePreference::Light,
            "dark" => egui::ThemePreference::Dark,
            _ => egui::ThemePreference::System,
        });
        let base = egui::Style::default().text_styles;
        ctx.all_styles_mut(|style| {
            for (ts, font) in style.text_styles.iter_mut() {
                if let Some(b) = base.get(ts) {
                    font.size = b.size * scale;
                }
            }
        });
        self.applied_look = Some(want);
    }

    fn help_ui(&mut self, ctx: &egui::Context) {
        let mut open = self.show_help;
        egui::Window::new("Keyboard shortcuts")
            .open(&mut open)
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
            .show(ctx, |ui| {
                egui::Grid::new("shortcuts").num_columns(2).show(ui, |ui| {
                    for (k, what) in SHORTCUTS {
                        ui.monospace(*k);
                        ui.label(*what);
                        ui.end_row();
                    }
                });
            });
        self.show_help = open;
    }

    fn about_ui(&mut self, ctx: &egui::Context) {
        if !self.show_about {
            self.about = None;
            return;
        }
        let info = self.about.get_or_insert_with(AboutInfo::read).clone();
        let mut open = true;
        egui::Window::new("About Spillway")
            .open(&mut open)
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
            .show(ctx, |ui| {
                ui.heading(format!("Spillway {}", info.version));
                ui.label("Local chat with quantized models, every layer in VRAM, RAM or on disk.");
                ui.separator();
                egui::Grid::new("about").num_columns(2).show(ui, |ui| {
                    ui.label("CPU kernels");
                    ui.label(&info.isa);
                    ui.end_row();
                    ui.label("CPU features");
                    ui.label(info.cpu_features.join(" "));
                    ui.end_row();
                    ui.label("GPU");
                    if info.gpus.is_empty() {
                        let l = ui.label("none found");
                        if let Some(n) = &info.gpu_note {
                            l.on_hover_text(n);
                        }
                    } else {
                        ui.label(info.gpus.join(", "));
                    }
                    ui.end_row();
                    ui.label("NVIDIA driver");
                    ui.label(info.driver.clone().unwrap_or_else(|| "—".into()));
                    ui.end_row();
                    ui.label("GPU tier");
                    ui.label(if cfg!(feature = "cuda") {
                        "CUDA (built with the cuda feature)"
                    } else {
                        "not built (CPU build; the planner can simulate one)"
                    });
                    ui.end_row();
                });
            });
        self.show_about = open;
    }

    fn apply_placement(&mut self, a: PlacementAction) {
        match a {
            PlacementAction::Preview => self.apply_settings(SettingsAction::PreviewPlacement),
            PlacementAction::Apply => self.apply_settings(SettingsAction::ApplyPlacement),
        }
    }
}

impl Banner {
    pub fn error(title: &str, message: &str, advice: &str) -> Self {
        Banner {
            title: title.into(),
            message: message.into(),
            advice: advice.into(),
            is_error: true,
        }
    }

    pub fn notice(title: &str, message: &str) -> Self {
        Banner {
            is_error: false,
            ..Self::error(title, message, "")
        }
    }

    pub fn from_error(title: &str, e: &ErrorInfo) -> Self {
        Self::error(title, &e.message, e.advice())
    }
}

impl eframe::App for SpillwayApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frame_ui(ui);
    }

    fn on_exit(&mut self) {
        self.save_settings();
        // A reply still streaming is saved as far as it came.
        if let Some(i) = self
            .streaming
            .as_ref()
            .and_then(|st| self.conv_index(&st.conv_id))
        {
            self.save(i);
        }
        let _ = self.link.send(Command::Shutdown);
    }
}
