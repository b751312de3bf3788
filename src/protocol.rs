//! What the window and the inference thread say to each other: `Command`s
//! go to the engine worker, `Event`s come back. Plain data only — no
//! tensors, no egui — so either side can be replaced (the UI tests drive the
//! window with a fake engine speaking this protocol).

use std::path::PathBuf;

use crate::chat::Message;
use crate::engine::PlacementRequest;
use crate::model::sampler::SamplingParams;
use crate::placement::Placement;
use crate::telemetry::Snapshot;

/// Identifies one reply request, so late events of a stopped request are
/// told from the next one's.
pub type ReqId = u64;

/// What to load, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadRequest {
    /// Ids are shared with replies: `EngineLink::stop(req_id)` cancels the
    /// load between layers.
    pub req_id: ReqId,
    /// A GGUF file or a folder holding one.
    pub model_path: PathBuf,
    pub placement: PlacementRequest,
    /// Context length in tokens; `None` uses the model's own.
    pub context_length: Option<usize>,
    pub threads: Option<usize>,
    /// How a Hugging Face folder's weights are stored (a GGUF loads as
    /// stored).
    pub quant: crate::placement::Quant,
    /// The largest image the plan budgets the vision tower for (pixels
    /// after resizing).
    pub max_image_pixels: usize,
    /// Disk-tier layers are read from copies in the offload folder
    /// (`placement.offload_dir`) instead of the model file.
    pub copy_disk_layers: bool,
    /// The drafter set up once the model is loaded.
    pub speculative: crate::engine::SpecOptions,
    /// How the KV cache stores keys and values.
    pub kv_types: crate::kernels::kv::KvTypes,
}

/// One reply to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyRequest {
    pub req_id: ReqId,
    /// The whole conversation, system prompt first; images are content
    /// parts `{"type": "image", "path": …}` with absolute paths.
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Let a model that can think (Qwen3, RoboBrain 7B/32B) think first.
    pub think: bool,
    /// Upper bound on an image's pixels after resizing (its token cost).
    pub max_pixels: Option<usize>,
    /// The reply ends before any of these strings (which are not sent).
    pub stop: Vec<String>,
    /// Keep going past the end-of-turn token (API clients that measure).
    pub ignore_eos: bool,
}

/// What the window needs to know of a vision-language model.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionInfo {
    /// The image processor (sizes, pixel bounds) — for token costs and for
    /// mapping answers back onto the original image.
    pub processor: crate::vision::ProcessorConfig,
    /// `Some(true)` for RoboBrain models that can think, `Some(false)` for
    /// RoboBrain 3B, `None` for others.
    pub thinking: Option<bool>,
    /// Which RoboBrain's task modes and answer format apply (from the
    /// architecture: Qwen3-VL is 2.5's).
    pub family: crate::vision::tasks::Family,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Load(LoadRequest),
    Unload,
    Generate(ReplyRequest),
    /// The plan a placement request would give, without applying it.
    Preview(PlacementRequest),
    /// Re-places the loaded model live (only the layers that move).
    Apply(PlacementRequest),
    /// Sets up speculative decoding for the loaded model (or turns it
    /// off); answered by `Event::Speculation`.
    Speculate(crate::engine::SpecOptions),
    Shutdown,
}

/// Where a load is.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadProgress {
    /// A model fetched from the Hugging Face Hub.
    Downloading(crate::weights::download::DownloadProgress),
    /// A Hugging Face checkpoint converted into the cache (once).
    Quantizing {
        done: usize,
        total: usize,
    },
    Reading,
    Placing,
    Layers {
        done: usize,
        total: usize,
    },
}

impl LoadProgress {
    /// 0..=1, for a progress bar.
    pub fn fraction(&self) -> f32 {
        match *self {
            LoadProgress::Downloading(ref d) => d.done_bytes as f32 / d.total_bytes.max(1) as f32,
            // Converting takes most of a first load; placing the rest.
            LoadProgress::Quantizing { done, total } => 0.7 * done as f32 / total.max(1) as f32,
            LoadProgress::Reading => 0.02,
            LoadProgress::Placing => 0.05,
            LoadProgress::Layers { done, total } => 0.05 + 0.95 * done as f32 / total.max(1) as f32,
        }
    }

    pub fn label(&self) -> String {
        match *self {
            LoadProgress::Downloading(ref d) => {
                let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
                let eta = d
                    .eta_secs
                    .map_or(String::new(), |s| format!(", {s:.0} s left"));
                format!(
                    "downloading {} ({}/{}): {:.0} of {:.0} MiB, {:.1} MiB/s{eta}",
                    d.file,
                    d.index + 1,
                    d.files,
                    mib(d.done_bytes),
                    mib(d.total_bytes),
                    mib(d.bytes_per_sec as u64)
                )
            }
            LoadProgress::Quantizing { done, total } => {
                format!("converting the checkpoint, layer {done}/{total}")
            }
            LoadProgress::Reading => "reading the model file".into(),
            LoadProgress::Placing => "planning placement".into(),
            LoadProgress::Layers { done, total } => format!("placing layers {done}/{total}"),
        }
    }
}

/// What the window shows about a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub n_layers: usize,
    pub context_length: usize,
    /// Weight bytes of each layer.
    pub layer_bytes: Vec<u64>,
    pub placement: Placement,
    /// Notes about the budgets (no GPU found, a simulated tier, caps).
    pub budget_notes: Vec<String>,
    pub gpu_name: Option<String>,
    /// Set when the model reads images.
    pub vision: Option<Box<VisionInfo>>,
    /// The weights are random (`spillway synthesize`): good for speed
    /// tests only.
    /// `Some(true)` when the model thinks when asked (Qwen3's template
    /// switch, RoboBrain 7B/32B), `Some(false)` for RoboBrain 3B, `None`
    /// otherwise.
    pub thinking: Option<bool>,
    pub synthetic: bool,
    /// The server's base URL when the model runs on an OpenAI-compatible
    /// server rather than here (no layers to show).
    pub remote: Option<String>,
    /// The drafter of speculative decoding, when on.
    pub speculation: Option<Box<crate::engine::SpecInfo>>,
    /// How the KV cache stores keys and values.
    pub kv_types: crate::kernels::kv::KvTypes,
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    EndOfTurn,
    Length,
    ContextFull,
    Cancelled,
    Failed,
}

/// Speed of one reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplyStats {
    pub time_to_first_token_secs: f64,
    pub prompt_tokens: usize,
    /// Prompt tokens served from the KV cache of an earlier request.
    #[serde(default)]
    pub reused_tokens: usize,
    pub generated_tokens: usize,
    pub decode_tokens_per_sec: f64,
    /// Speculative decoding: tokens drafted and accepted in this reply.
    #[serde(default)]
    pub draft_proposed: usize,
    #[serde(default)]
    pub draft_accepted: usize,
}

impl ReplyStats {
    /// The share of drafted tokens accepted, when any were drafted.
    pub fn acceptance(&self) -> Option<f64> {
        (self.draft_proposed > 0).then(|| self.draft_accepted as f64 / self.draft_proposed as f64)
    }
}

/// An error as it crosses the channel: what kind, and the message to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The model file or folder is unusable.
    BadModel,
    /// Placement found no layout that fits.
    DoesNotFit,
    OutOfMemory,
    /// The conversation does not fit the context.
    ContextFull,
    /// A command that needs a model came without one.
    NoModel,
    /// The user cancelled it (a load).
    Cancelled,
    /// The request itself is wrong (an unreadable image, an empty prompt).
    Invalid,
    /// An OpenAI-compatible server failed or refused (the message says what
    /// to do).
    Remote,
    Other,
}

impl ErrorInfo {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorInfo {
            kind,
            message: message.into(),
        }
    }

    /// What the user can do about it.
    pub fn advice(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadModel => "Choose another GGUF file or model folder in Settings.",
            ErrorKind::DoesNotFit => {
                "Choose auto or a mode with more offload in Settings, or raise the RAM cap."
            }
            ErrorKind::OutOfMemory => "Lower the VRAM cap or the GPU layers in Settings.",
            ErrorKind::ContextFull => {
                "Start a new conversation, or raise the context length in Settings."
            }
            ErrorKind::NoModel => "Open a model in Settings first.",
            ErrorKind::Cancelled | ErrorKind::Invalid | ErrorKind::Remote | ErrorKind::Other => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    LoadProgress(LoadProgress),
    Loaded(ModelInfo),
    LoadFailed(ErrorInfo),
    Unloaded,
    /// Reply `req_id` passed its checks (images read, the prompt fits the
    /// context) and its prompt is being computed: `prompt_tokens` long,
    /// `opened_thinking` when the prompt itself opened a `<think>` block.
    Started {
        req_id: ReqId,
        prompt_tokens: usize,
        opened_thinking: bool,
    },
    /// How far the prompt of reply `req_id` has been computed (sent after
    /// each chunk of a prompt longer than one chunk).
    PromptProgress {
        req_id: ReqId,
        done: usize,
        total: usize,
    },
    /// Text of reply `req_id`, as it is decoded.
    Token {
        req_id: ReqId,
        text: String,
    },
    Finished {
        req_id: ReqId,
        finish: Finish,
        stats: ReplyStats,
    },
    /// A reply failed; `Finished { finish: Failed }` follows.
    ReplyFailed {
        req_id: ReqId,
        error: ErrorInfo,
    },
    /// The plan a preview asked for.
    Preview(Result<Placement, ErrorInfo>),
    /// The placement in force changed (applied, or re-planned after an
    /// out-of-memory).
    Placed(Placement),
    /// Something the user should know (a re-plan after an out-of-memory).
    Notice(String),
    /// The drafter now in use (`None`: speculative decoding is off).
    Speculation(Option<crate::engine::SpecInfo>),
    Telemetry(Box<Snapshot>),
    /// The worker stopped (after `Shutdown`, or because it failed); the
    /// window offers a restart.
    Stopped {
        error: Option<String>,
    },
}
