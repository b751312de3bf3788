//! The settings pane: the model (a native file dialog, recent models), the
//! offload mode, GPU layers, VRAM and RAM caps, the offload folder, context
//! length, sampling and threads. Settings start from the config defaults
//! (embedded in the binary) and are kept in the platform config folder as
//! YAML, written atomically; a file that cannot be read gives a message and
//! the defaults.

use crate::kernels::kv::{CacheType, KvTypes};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::engine::PlacementRequest;
use crate::model::sampler::SamplingParams;
use crate::placement::{BudgetOptions, Mode, Quant};

const GIB: f64 = (1u64 << 30) as f64;
const RECENT_MODELS: usize = 8;

#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum SettingsAction {
    /// Load this model.
    Open(PathBuf),
    /// A value changed (saved at once).
    Changed,
    /// Show what the placement settings would give.
    PreviewPlacement,
    /// Re-place the loaded model with them.
    ApplyPlacement,
    /// Empty the converted-model cache.
    ClearCache,
    /// Start, stop or move the API server (`serve_api`, `serve_port`).
    ServeApi,
    /// Ask the server at `server_url` for its models.
    ListServerModels,
    /// Switch engines (this computer, or the server and model chosen).
    SwitchEngine,
    /// Set up the speculative decoding settings for the loaded model.
    ApplySpeculation,
}

/// What the pane shows of the API server the window runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiView {
    /// `http://127.0.0.1:PORT/v1` while serving.
    pub url: Option<String>,
    /// Why it is not serving (the port is taken).
    pub error: Option<String>,
    /// Requests waiting or running.
    pub in_flight: usize,
}

/// The offload choices the pane offers (a GPU-layer count is its own
/// setting).
pub const MODES: [&str; 5] = [
    "auto",
    "full-gpu",
    "cpu-offload",
    "disk-offload",
    "cpu-only",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub last_model: Option<PathBuf>,
    pub recent_models: Vec<PathBuf>,
    /// One of [`MODES`].
    pub mode: String,
    /// Overrides the mode: exactly this many layers on the GPU.
    pub gpu_layers: Option<usize>,
    pub vram_cap_gib: Option<f64>,
    pub ram_cap_gib: Option<f64>,
    pub offload_folder: PathBuf,
    /// Disk-tier layers are read from copies in the offload folder (for a
    /// model on slow or removable storage) instead of the model file.
    #[serde(default)]
    pub copy_disk_layers: bool,
    pub context_length: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
    pub threads: Option<usize>,
    pub system_prompt: String,
    /// One of [`QUANTS`]: how a Hugging Face folder is stored.
    pub quant: String,
    /// The repo id being typed (not saved).
    #[serde(skip)]
    pub repo_input: String,
    /// Upper bound on an image's pixels after resizing: its token cost
    /// (28×28 pixels a token) and the vision tower's memory.
    pub max_image_pixels: usize,
    /// Serve the OpenAI API on 127.0.0.1:`serve_port` with the loaded model.
    pub serve_api: bool,
    pub serve_port: u16,
    /// The key API clients must send (empty: none). Not written to the
    /// settings file.
    #[serde(skip)]
    pub serve_key: String,
    /// Which engine answers: `local` (this computer) or `server` (an
    /// OpenAI-compatible server).
    pub engine: String,
    /// The server's base URL, e.g. http://127.0.0.1:8000/v1.
    pub server_url: String,
    /// The server's model the chat uses.
    pub server_model: String,
    /// The server's API key: kept in the platform keyring, never in this
    /// file.
    #[serde(skip)]
    pub server_key: String,
    /// The server's models, as last listed (not saved).
    #[serde(skip)]
    pub server_models: Vec<String>,
    /// Speculative decoding: one of [`SPECULATIVE`].
    #[serde(default = "default_speculative")]
    pub speculative: String,
    /// Prompt lookup's longest n-gram.
    #[serde(default = "default_ngram")]
    pub lookup_ngram: usize,
    /// The draft model (same tokenizer as the model).
    #[serde(default)]
    pub draft_model: Option<PathBuf>,
    /// The self-draft's scheme (one of [`DRAFT_QUANTS`]).
    #[serde(default = "default_draft_quant")]
    pub draft_quant: String,
    /// The most tokens drafted for one pass.
    #[serde(default = "default_draft_tokens")]
    pub draft_tokens: usize,
    /// How the KV cache stores keys and values (from the next load).
    #[serde(default)]
    pub cache_type_k: CacheType,
    #[serde(default)]
    pub cache_type_v: CacheType,
    /// The camera's intrinsics (pixels of the original image), for metric
    /// 3-D points of RoboBrain 2.5's traces.
    #[serde(default)]
    pub intrinsics: Option<crate::vision::tasks::Intrinsics>,
    /// `system`, `light` or `dark`.
    #[serde(default = "default_theme")]
    pub theme: String,
    /// Text size relative to egui's (0.8–1.6).
    #[serde(default = "default_text_scale")]
    pub text_scale: f32,
    /// The starter model was fetched once (it is not fetched again when
    /// the user removes it).
    #[serde(default)]
    pub starter_fetched: bool,
}

/// The themes the pane offers.
pub const THEMES: [&str; 3] = ["system", "light", "dark"];

fn default_theme() -> String {
    "system".into()
}

fn default_text_scale() -> f32 {
    1.0
}

/// Speculative decoding's choices, and how the pane names them.
pub const SPECULATIVE: [(&str, &str); 4] = [
    ("off", "off"),
    ("lookup", "prompt lookup"),
    ("draft", "draft model"),
    ("self", "self-draft"),
];

/// Self-draft schemes.
pub const DRAFT_QUANTS: [&str; 2] = ["q4_k_m", "q8_0"];

fn default_speculative() -> String {
    "off".into()
}

fn default_ngram() -> usize {
    crate::engine::speculative::DEFAULT_NGRAM
}

fn default_draft_quant() -> String {
    "q4_k_m".into()
}

fn default_draft_tokens() -> usize {
    crate::engine::speculative::DEFAULT_DRAFT
}

pub use crate::placement::footprint::DEFAULT_MAX_IMAGE_PIXELS;

/// The API server's port unless changed (llama-server's too).
pub const DEFAULT_SERVE_PORT: u16 = 8080;

/// The quantization choices (`placement::Quant` names).
pub const QUANTS: [&str; 5] = ["q4_k_m", "q8_0", "f16", "bf16", "none"];

fn quant_label(q: &str) -> &'static str {
    match q {
        "q4_k_m" => "4-bit (Q4_K_M)",
        "q8_0" => "8-bit (Q8_0)",
        "f16" => "16-bit (f16)",
        "bf16" => "16-bit (bf16)",
        _ => "as stored",
    }
}

impl Default for Settings {
    fn default() -> Self {
        match Config::defaults() {
            Ok(c) => Self::from_config(&c),
            // The embedded defaults always parse (a unit test checks); this
            // only keeps a broken build from panicking.
            Err(_) => Settings {
                last_model: None,
                recent_models: Vec::new(),
                mode: "auto".into(),
                gpu_layers: None,
                vram_cap_gib: None,
                ram_cap_gib: None,
                offload_folder: "offload".into(),
                copy_disk_layers: false,
                context_length: None,
                temperature: 0.7,
                top_p: 0.95,
                top_k: 40,
                min_p: 0.05,
                repetition_penalty: 1.0,
                max_new_tokens: 512,
                seed: 42,
                threads: None,
                system_prompt: String::new(),
                quant: "none".into(),
                repo_input: String::new(),
                max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
                serve_api: false,
                serve_port: DEFAULT_SERVE_PORT,
                serve_key: String::new(),
                engine: "local".into(),
                server_url: String::new(),
                server_model: String::new(),
                server_key: String::new(),
                server_models: Vec::new(),
                speculative: default_speculative(),
                lookup_ngram: default_ngram(),
                draft_model: None,
                draft_quant: default_draft_quant(),
                draft_tokens: default_draft_tokens(),
                cache_type_k: CacheType::default(),
                cache_type_v: CacheType::default(),
                intrinsics: None,
                theme: default_theme(),
                text_scale: default_text_scale(),
                starter_fetched: false,
            },
        }
    }
}

/// Renames an unreadable settings file to `NAME.unreadable-SECS`, so that
/// defaults saved later never overwrite what the user wrote.
pub fn keep_aside(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let name = path
        .file_name()
        .map_or_else(|| "settings".into(), |n| n.to_string_lossy().into_owned());
    let to = path.with_file_name(format!(
        "{name}.unreadable-{}",
        crate::chat::history::now_secs()
    ));
    std::fs::rename(path, &to)?;
    Ok(to)
}

impl Settings {
    pub fn from_config(c: &Config) -> Self {
        let g = &c.generation;
        Settings {
            last_model: None,
            recent_models: Vec::new(),
            mode: match c.mode {
                Mode::GpuLayers(_) => "auto".into(),
                m => m.to_string(),
            },
            gpu_layers: match c.mode {
                Mode::GpuLayers(n) => Some(n),
                _ => None,
            },
            vram_cap_gib: None,
            ram_cap_gib: None,
            offload_folder: c.offload_folder.clone(),
            copy_disk_layers: c.copy_disk_layers,
            context_length: c.context_length,
            temperature: g.temperature,
            top_p: g.top_p,
            top_k: g.top_k,
            min_p: g.min_p,
            repetition_penalty: g.repetition_penalty,
            max_new_tokens: g.max_new_tokens,
            seed: g.seed,
            threads: c.threads,
            system_prompt: String::new(),
            quant: c.quant.to_string(),
            repo_input: String::new(),
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            serve_api: false,
            serve_port: DEFAULT_SERVE_PORT,
            serve_key: String::new(),
            engine: "local".into(),
            server_url: String::new(),
            server_model: String::new(),
            server_key: String::new(),
            server_models: Vec::new(),
            speculative: default_speculative(),
            lookup_ngram: default_ngram(),
            draft_model: None,
            draft_quant: default_draft_quant(),
            draft_tokens: default_draft_tokens(),
            cache_type_k: c.kv_types.k,
            cache_type_v: c.kv_types.v,
            intrinsics: None,
            theme: default_theme(),
            text_scale: default_text_scale(),
            starter_fetched: false,
        }
    }

    /// The user's settings file over `config`'s defaults; a missing file is
    /// the defaults, a bad one an error message.
    pub fn load(path: &Path, config: &Config) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::from_config(config))
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let s: Settings =
            yaml_serde::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        s.mode
            .parse::<Mode>()
            .map_err(|e| format!("{}: mode: {e}", path.display()))?;
        s.quant
            .parse::<Quant>()
            .map_err(|e| format!("{}: quant: {e}", path.display()))?;
        if !SPECULATIVE.iter().any(|(k, _)| *k == s.speculative) {
            return Err(format!(
                "{}: speculative must be off, lookup, draft or self, not {:?}",
                path.display(),
                s.speculative
            ));
        }
        if !DRAFT_QUANTS.contains(&s.draft_quant.as_str()) {
            return Err(format!(
                "{}: draft_quant must be q4_k_m or q8_0, not {:?}",
                path.display(),
                s.draft_quant
            ));
        }
        if !["local", "server"].contains(&s.engine.as_str()) {
            return Err(format!(
                "{}: engine must be local or server, not {:?}",
                path.display(),
                s.engine
            ));
        }
        let mut s = s;
        // The server's key comes from the keyring, never from this file.
        s.server_key = super::keys::load(&s.server_url).unwrap_or_default();
        Ok(s)
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = yaml_serde::to_string(self).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        crate::chat::history::write_atomic(path, text.as_bytes(), &mut || Ok(()))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn remember_model(&mut self, path: &Path) {
        self.recent_models.retain(|p| p != path);
        self.recent_models.insert(0, path.to_path_buf());
        self.recent_models.truncate(RECENT_MODELS);
        self.last_model = Some(path.to_path_buf());
    }

    pub fn kv_types(&self) -> KvTypes {
        KvTypes::new(self.cache_type_k, self.cache_type_v)
    }

    pub fn quant(&self) -> Quant {
        self.quant.parse().unwrap_or_default()
    }

    pub fn mode(&self) -> Mode {
        match self.gpu_layers {
            Some(n) => Mode::GpuLayers(n),
            None => self.mode.parse().unwrap_or_default(),
        }
    }

    pub fn placement_request(&self) -> PlacementRequest {
        let bytes = |gib: Option<f64>| gib.map(|g| (g.max(0.0) * GIB) as u64);
        PlacementRequest {
            mode: self.mode(),
            budget: BudgetOptions {
                vram_bytes: bytes(self.vram_cap_gib),
                ram_bytes: bytes(self.ram_cap_gib),
                ram_as_given: false,
            },
            offload_dir: self.offload_folder.clone(),
            ..PlacementRequest::default()
        }
    }

    /// Speculative decoding as set (a draft model not chosen yet is off).
    pub fn spec_options(&self) -> crate::engine::SpecOptions {
        use crate::engine::Drafting;
        let drafting = match self.speculative.as_str() {
            "lookup" => Drafting::Lookup(self.lookup_ngram.clamp(1, 8)),
            "draft" => match &self.draft_model {
                Some(p) => Drafting::Model(p.clone()),
                None => Drafting::Off,
            },
            "self" => Drafting::SelfDraft(self.draft_quant.parse().unwrap_or(Quant::Q4KM)),
            _ => Drafting::Off,
        };
        crate::engine::SpecOptions {
            drafting,
            max_draft: self
                .draft_tokens
                .clamp(1, crate::engine::speculative::MAX_DRAFT),
            ..Default::default()
        }
    }

    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}

/// An optional number: a checkbox and, when checked, a drag value.
fn optional<T: egui::emath::Numeric>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    suffix: &str,
) -> bool {
    let mut changed = false;
    ui.horizontal(|ui| {
        let mut on = value.is_some();
        let check = ui.checkbox(&mut on, label);
        if check.changed() {
            *value = on.then_some(default);
            changed = true;
        }
        if let Some(v) = value {
            changed |= ui
                .add(egui::DragValue::new(v).range(range).suffix(suffix))
                .labelled_by(check.id)
                .changed();
        }
    });
    changed
}

/// One labelled row of a grid; whether the value changed.
fn grid_row(ui: &mut egui::Ui, label: &str, widget: impl egui::Widget) -> bool {
    let l = ui.label(label);
    let changed = ui.add(widget).labelled_by(l.id).changed();
    ui.end_row();
    changed
}

/// `cache`: what the converted-model cache holds (bytes, files).
pub fn settings_ui(
    ui: &mut egui::Ui,
    s: &mut Settings,
    cache: (u64, usize),
    api: &ApiView,
) -> Vec<SettingsAction> {
    let mut actions = Vec::new();
    let mut changed = false;
    egui::ScrollArea::vertical().show(ui, |ui| {
        engine_ui(ui, s, &mut actions);
        ui.separator();
        ui.heading("Model");
        ui.horizontal(|ui| {
            if let Some(p) = super::models::open_buttons(ui) {
                actions.push(SettingsAction::Open(p));
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("Hugging Face repo");
            let edit = ui
                .add(
                    egui::TextEdit::singleline(&mut s.repo_input)
                        .hint_text("owner/name, e.g. mistralai/Mistral-7B-Instruct-v0.3")
                        .desired_width(330.0),
                )
                .labelled_by(label.id);
            let entered = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let repo = s.repo_input.trim().to_string();
            let valid = crate::weights::download::RepoRef::parse(&repo).is_some();
            let clicked = ui
                .add_enabled(valid, egui::Button::new("Download and open"))
                .on_hover_text(
                    "From the Hugging Face Hub into its cache (~/.cache/huggingface); \
                     gated models need HF_TOKEN or `huggingface-cli login`. \
                     A GGUF repository takes owner/name:file.gguf.",
                )
                .clicked();
            if valid && (clicked || entered) {
                actions.push(SettingsAction::Open(PathBuf::from(repo)));
            }
        });
        if !s.recent_models.is_empty() {
            ui.label("Recent models:");
            for p in s.recent_models.clone() {
                if ui.link(p.display().to_string()).clicked() {
                    actions.push(SettingsAction::Open(p));
                }
            }
        }
        egui::ComboBox::from_label("Quantization of Hugging Face checkpoints")
            .selected_text(quant_label(&s.quant))
            .show_ui(ui, |ui| {
                for q in QUANTS {
                    changed |= ui
                        .selectable_value(&mut s.quant, q.to_string(), quant_label(q))
                        .changed();
                }
            });
        ui.small(
            "Converted once into the cache when the folder is opened; GGUF files load as \
             stored.",
        );

        ui.separator();
        ui.heading("Placement");
        egui::ComboBox::from_label("Offload mode")
            .selected_text(s.mode.clone())
            .show_ui(ui, |ui| {
                for m in MODES {
                    changed |= ui.selectable_value(&mut s.mode, m.to_string(), m).changed();
                }
            });
        changed |= optional(ui, "GPU layers", &mut s.gpu_layers, 0, 0..=512, "");
        changed |= optional(
            ui,
            "VRAM cap",
            &mut s.vram_cap_gib,
            4.0,
            0.0..=512.0,
            " GiB",
        );
        changed |= optional(ui, "RAM cap", &mut s.ram_cap_gib, 8.0, 0.0..=4096.0, " GiB");
        ui.horizontal(|ui| {
            ui.label("Offload folder:");
            ui.monospace(s.offload_folder.display().to_string());
            if ui.button("Choose…").clicked() {
                if let Some(p) = rfd::FileDialog::new().pick_folder() {
                    s.offload_folder = p;
                    // A folder chosen is a folder to use.
                    s.copy_disk_layers = true;
                    changed = true;
                }
            }
        });
        changed |= ui
            .checkbox(
                &mut s.copy_disk_layers,
                "Read disk layers from copies in the offload folder",
            )
            .on_hover_text(
                "For a model on slow or removable storage: disk-tier layers are copied into \
                 the offload folder at load and read from there; the copies are removed \
                 when the model is unloaded.",
            )
            .changed();
        ui.horizontal(|ui| {
            ui.label(format!(
                "Converted models: {} in {} file{}",
                crate::placement::planner::human(cache.0),
                cache.1,
                if cache.1 == 1 { "" } else { "s" }
            ));
            if ui
                .add_enabled(cache.1 > 0, egui::Button::new("Clear cache"))
                .clicked()
            {
                actions.push(SettingsAction::ClearCache);
            }
        });
        ui.horizontal(|ui| {
            if ui.button("Preview placement").clicked() {
                actions.push(SettingsAction::PreviewPlacement);
            }
            if ui.button("Apply placement").clicked() {
                actions.push(SettingsAction::ApplyPlacement);
            }
        });

        ui.separator();
        ui.heading("Generation");
        changed |= optional(
            ui,
            "Context length",
            &mut s.context_length,
            4096,
            64..=1 << 20,
            " tokens",
        );
        egui::Grid::new("sampling").num_columns(2).show(ui, |ui| {
            changed |= grid_row(
                ui,
                "Temperature",
                egui::Slider::new(&mut s.temperature, 0.0..=2.0),
            );
            changed |= grid_row(ui, "Top-p", egui::Slider::new(&mut s.top_p, 0.0..=1.0));
            changed |= grid_row(ui, "Top-k", egui::Slider::new(&mut s.top_k, 0..=200));
            changed |= grid_row(
                ui,
                "Repetition penalty",
                egui::Slider::new(&mut s.repetition_penalty, 1.0..=2.0),
            );
            changed |= grid_row(
                ui,
                "Max new tokens",
                egui::DragValue::new(&mut s.max_new_tokens).range(1..=32768),
            );
            changed |= grid_row(ui, "Seed", egui::DragValue::new(&mut s.seed));
            let tokens = format!(" (≤ {} tokens)", s.max_image_pixels / 784);
            changed |= grid_row(
                ui,
                "Max pixels per image",
                egui::DragValue::new(&mut s.max_image_pixels)
                    .range(28 * 28 * 4..=28 * 28 * 16_384)
                    .speed(784.0)
                    .suffix(tokens),
            );
        });
        changed |= optional(ui, "Threads", &mut s.threads, 4, 1..=256, "");
        changed |= intrinsics_ui(ui, s);
        changed |= kv_ui(ui, s);
        let l = ui.label("Default system prompt for new conversations:");
        changed |= ui
            .add(egui::TextEdit::multiline(&mut s.system_prompt).desired_width(f32::INFINITY))
            .labelled_by(l.id)
            .changed();

        ui.separator();
        changed |= speculative_ui(ui, s, &mut actions);

        ui.separator();
        api_ui(ui, s, api, &mut actions);

        ui.separator();
        changed |= appearance_ui(ui, s);
    });
    if changed {
        actions.push(SettingsAction::Changed);
    }
    actions
}

/// The camera's intrinsics for RoboBrain 2.5's depth answers.
fn intrinsics_ui(ui: &mut egui::Ui, s: &mut Settings) -> bool {
    let mut changed = false;
    ui.horizontal(|ui| {
        let mut on = s.intrinsics.is_some();
        if ui
            .checkbox(&mut on, "Camera intrinsics")
            .on_hover_text(
                "fx, fy, cx, cy in pixels of the original image: RoboBrain 2.5's depth \
                 answers are then also shown and exported as metric 3-D points \
                 (camera frame: x right, y down, z forward)",
            )
            .changed()
        {
            s.intrinsics = on.then_some(crate::vision::tasks::Intrinsics {
                fx: 600.0,
                fy: 600.0,
                cx: 320.0,
                cy: 240.0,
            });
            changed = true;
        }
        if let Some(k) = s.intrinsics.as_mut() {
            for (label, v) in [
                ("fx", &mut k.fx),
                ("fy", &mut k.fy),
                ("cx", &mut k.cx),
                ("cy", &mut k.cy),
            ] {
                ui.label(label);
                let range = if label.starts_with('f') {
                    1.0..=1e5
                } else {
                    -1e5..=1e5
                };
                changed |= ui.add(egui::DragValue::new(v).range(range)).changed();
            }
        }
    });
    changed
}

/// Theme and text size.
fn appearance_ui(ui: &mut egui::Ui, s: &mut Settings) -> bool {
    let mut changed = false;
    ui.heading("Appearance");
    ui.horizontal(|ui| {
        ui.label("Theme");
        for t in THEMES {
            let label = match t {
                "system" => "follow the system",
                other => other,
            };
            changed |= ui
                .selectable_value(&mut s.theme, t.to_string(), label)
                .changed();
        }
    });
    ui.horizontal(|ui| {
        let l = ui.label("Text size");
        changed |= ui
            .add(
                egui::Slider::new(&mut s.text_scale, 0.8..=1.6)
                    .step_by(0.05)
                    .custom_formatter(|v, _| format!("{:.0} %", v * 100.0)),
            )
            .labelled_by(l.id)
            .changed();
    });
    changed
}

/// The KV cache's key and value types (used from the next load).
fn kv_ui(ui: &mut egui::Ui, s: &mut Settings) -> bool {
    let mut changed = false;
    ui.horizontal(|ui| {
        ui.label("KV cache").on_hover_text(
            "How keys and values are stored: f16 halves f32's memory; q8_0 halves f16's with \
             a perplexity change under 1 %; q4_0 saves most but costs quality (keys are \
             the more sensitive half). Used from the next load.",
        );
        for (label, ty) in [
            ("keys", &mut s.cache_type_k),
            ("values", &mut s.cache_type_v),
        ] {
            egui::ComboBox::from_label(label)
                .selected_text(ty.name())
                .show_ui(ui, |ui| {
                    for t in CacheType::ALL {
                        changed |= ui.selectable_value(ty, t, t.name()).changed();
                    }
                });
        }
    });
    changed
}

/// Speculative decoding: the drafter and its settings, applied to the
/// loaded model with a button (a draft model takes a while to load).
fn speculative_ui(ui: &mut egui::Ui, s: &mut Settings, actions: &mut Vec<SettingsAction>) -> bool {
    let mut changed = false;
    ui.heading("Speculative decoding");
    let label = |k: &str| {
        SPECULATIVE
            .iter()
            .find(|(key, _)| *key == k)
            .map_or("off", |(_, l)| *l)
    };
    egui::ComboBox::from_label("Drafter")
        .selected_text(label(&s.speculative))
        .show_ui(ui, |ui| {
            for (k, l) in SPECULATIVE {
                changed |= ui
                    .selectable_value(&mut s.speculative, k.to_string(), l)
                    .changed();
            }
        });
    match s.speculative.as_str() {
        "lookup" => {
            changed |= ui
                .add(egui::Slider::new(&mut s.lookup_ngram, 1..=8).text("longest n-gram"))
                .changed();
            ui.small(
                "Drafts the continuation of earlier text of the conversation: free, and                  fast when a reply repeats (code edits, quotes, summaries).",
            );
        }
        "draft" => {
            ui.horizontal(|ui| {
                ui.label("Draft model:");
                ui.monospace(
                    s.draft_model
                        .as_ref()
                        .map_or("none chosen".into(), |p| p.display().to_string()),
                );
                if ui.button("Choose…").clicked() {
                    if let Some(p) = rfd::FileDialog::new()
                        .add_filter("GGUF model", &["gguf"])
                        .pick_file()
                    {
                        s.draft_model = Some(p);
                        changed = true;
                    }
                }
            });
            ui.small(
                "A small model with the same tokenizer (a 0.5B for a 7B of its family),                  placed in the fastest memory the model leaves free.",
            );
        }
        "self" => {
            egui::ComboBox::from_label("Draft quantization")
                .selected_text(quant_label(&s.draft_quant))
                .show_ui(ui, |ui| {
                    for q in DRAFT_QUANTS {
                        changed |= ui
                            .selectable_value(&mut s.draft_quant, q.to_string(), quant_label(q))
                            .changed();
                    }
                });
            ui.small(
                "The model itself quantized lower, made once into the cache: no second                  download. Pays most when the model's layers are on disk.",
            );
        }
        _ => {}
    }
    if s.speculative != "off" {
        changed |= ui
            .add(egui::Slider::new(&mut s.draft_tokens, 1..=16).text("most tokens drafted"))
            .changed();
    }
    ui.horizontal(|ui| {
        if ui.button("Apply to the loaded model").clicked() {
            actions.push(SettingsAction::ApplySpeculation);
        }
        ui.small("Replies stay the same with greedy sampling and keep their odds otherwise.");
    });
    changed
}

/// Which engine answers: this computer, or an OpenAI-compatible server
/// (base URL, key, a model from its list).
fn engine_ui(ui: &mut egui::Ui, s: &mut Settings, actions: &mut Vec<SettingsAction>) {
    ui.heading("Engine");
    ui.horizontal(|ui| {
        if ui
            .radio_value(&mut s.engine, "local".to_string(), "This computer")
            .clicked()
        {
            actions.push(SettingsAction::SwitchEngine);
            actions.push(SettingsAction::Changed);
        }
        ui.radio_value(
            &mut s.engine,
            "server".to_string(),
            "OpenAI-compatible server",
        )
        .on_hover_text("vLLM, SGLang, llama.cpp's llama-server, Ollama, or another Spillway");
    });
    if s.engine != "server" {
        return;
    }
    egui::Grid::new("server").num_columns(2).show(ui, |ui| {
        let l = ui.label("Base URL");
        ui.add(
            egui::TextEdit::singleline(&mut s.server_url)
                .hint_text("http://127.0.0.1:8000/v1")
                .desired_width(300.0),
        )
        .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("API key");
        ui.add(
            egui::TextEdit::singleline(&mut s.server_key)
                .password(true)
                .hint_text("none")
                .desired_width(300.0),
        )
        .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Model");
        ui.horizontal(|ui| {
            egui::ComboBox::from_id_salt("server-model")
                .selected_text(if s.server_model.is_empty() {
                    "choose…"
                } else {
                    &s.server_model
                })
                .show_ui(ui, |ui| {
                    for m in s.server_models.clone() {
                        ui.selectable_value(&mut s.server_model, m.clone(), m);
                    }
                })
                .response
                .labelled_by(l.id);
            if ui
                .add_enabled(
                    !s.server_url.trim().is_empty(),
                    egui::Button::new("List models"),
                )
                .clicked()
            {
                actions.push(SettingsAction::ListServerModels);
            }
        });
        ui.end_row();
    });
    let ready = !s.server_url.trim().is_empty() && !s.server_model.is_empty();
    if ui
        .add_enabled(ready, egui::Button::new("Connect"))
        .on_hover_text(
            "Chat through this server's model; the API key is kept in the platform keyring",
        )
        .clicked()
    {
        actions.push(SettingsAction::SwitchEngine);
        actions.push(SettingsAction::Changed);
    }
}

/// The API server: on/off, its port and key, and where it serves.
fn api_ui(ui: &mut egui::Ui, s: &mut Settings, api: &ApiView, actions: &mut Vec<SettingsAction>) {
    ui.heading("API server");
    let mut restart = false;
    ui.horizontal(|ui| {
        restart |= ui
            .checkbox(
                &mut s.serve_api,
                format!("Serve API on localhost:{}", s.serve_port),
            )
            .on_hover_text(
                "An OpenAI-compatible API (/v1/chat/completions, /v1/models) on this \
                 computer only, answered by the loaded model; its requests queue with \
                 the chat's.",
            )
            .changed();
        let l = ui.label("Port");
        let port = ui
            .add(egui::DragValue::new(&mut s.serve_port).range(1024..=65535))
            .labelled_by(l.id);
        // A new port takes effect when the value is set, not per keystroke.
        restart |= s.serve_api && (port.drag_stopped() || port.lost_focus());
    });
    ui.horizontal(|ui| {
        let l = ui.label("API key (optional)");
        let key = ui
            .add(
                egui::TextEdit::singleline(&mut s.serve_key)
                    .password(true)
                    .hint_text("none")
                    .desired_width(200.0),
            )
            .labelled_by(l.id);
        restart |= s.serve_api && key.lost_focus();
    });
    if let Some(url) = &api.url {
        ui.horizontal(|ui| {
            ui.label("Serving at");
            ui.monospace(url);
            if ui.small_button("Copy").clicked() {
                ui.ctx().copy_text(url.clone());
            }
        });
        let key = if s.serve_key.is_empty() {
            "no key".to_string()
        } else {
            format!("key {}", s.serve_key)
        };
        ui.small(format!(
            "{key} · {} request{} waiting or running",
            api.in_flight,
            if api.in_flight == 1 { "" } else { "s" }
        ));
    }
    if let Some(e) = &api.error {
        ui.colored_label(ui.visuals().error_fg_color, e);
    }
    if restart {
        actions.push(SettingsAction::ServeApi);
        actions.push(SettingsAction::Changed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.yaml");
        let config = Config::defaults().unwrap();
        assert_eq!(
            Settings::load(&path, &config).unwrap(),
            Settings::from_config(&config)
        );
        let mut s = Settings::from_config(&config);
        s.mode = "disk-offload".into();
        s.vram_cap_gib = Some(6.0);
        s.remember_model(Path::new("/m/a.gguf"));
        s.save(&path).unwrap();
        assert_eq!(Settings::load(&path, &config).unwrap(), s);
        assert_eq!(s.placement_request().budget.vram_bytes, Some(6 << 30));
        assert_eq!(s.placement_request().mode, Mode::DiskOffload);
        std::fs::write(&path, "mode: sideways\n").unwrap();
        assert!(Settings::load(&path, &config).unwrap_err().contains("mode"));
        std::fs::write(&path, "temperature: [1, 2\n").unwrap();
        assert!(Settings::load(&path, &config).is_err());
    }

    #[test]
    fn the_configs_mode_is_the_starting_mode() {
        for (yaml, mode) in [
            ("model:\n  device_map: cpu\n", Mode::CpuOnly),
            ("offload:\n  mode: 12\n", Mode::GpuLayers(12)),
            ("model:\n  device_map: balanced\n", Mode::CpuOffload),
        ] {
            let c = Config::from_layers(&[(yaml, "user")]).unwrap();
            assert_eq!(Settings::from_config(&c).mode(), mode, "{yaml}");
        }
    }
}
