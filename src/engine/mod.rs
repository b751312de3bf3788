//! The inference engine: loads a model into its tiers, turns conversations
//! into tokens, generates with a KV cache kept across turns, and measures
//! perplexity. The headless commands call it directly; the desktop app will
//! run it on its worker thread behind the protocol channel.
//!
//! The engine owns the model outright. It never draws and never blocks on
//! anything but its own computation; cancellation is an atomic flag checked
//! between tokens and between prompt chunks.

mod generate;
mod perplexity;
mod placing;
mod report;
pub mod speculative;
pub mod vision;
pub mod worker;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::chat::{ChatTemplate, Message, TemplateError};
pub use crate::kernels::kv::{CacheType, KvTypes};
use crate::model::hparams::HParams;
use crate::model::kv_cache::KvCache;
use crate::model::transformer::{Input, LogitsFor, Scratch, Transformer};
use crate::model::ModelError;
use crate::placement::budget::Held;
use crate::placement::store::DiskSource;
use crate::placement::{calibrate, Footprint, LayerStore, Tier};
use crate::telemetry::machine::Machine;
use crate::weights::gguf::{GgufError, GgufFile};
use crate::weights::read::read_qtensor;
use crate::weights::tokenizer::{TextTokenizer, TokenizerError};

pub use generate::{FinishReason, GenerateParams, Generation};
pub use perplexity::Perplexity;
pub use placing::{plan_for, Notice, PlacementRequest};
pub use speculative::{Drafting, SpecInfo, SpecOptions};

pub use crate::model::PROMPT_CHUNK;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the prompt is {prompt_tokens} tokens but the context holds {context} (room is needed for at least one reply token); shorten the conversation or raise --ctx")]
    ContextExceeded {
        prompt_tokens: usize,
        context: usize,
    },
    #[error(transparent)]
    Placement(#[from] crate::placement::PlacementError),
    #[error("{0}")]
    Invalid(String),
}

/// How many layers live on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskLayers {
    #[default]
    None,
    Count(usize),
    All,
}

impl FromStr for DiskLayers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(DiskLayers::All),
            "0" | "none" => Ok(DiskLayers::None),
            n => n
                .parse()
                .map(DiskLayers::Count)
                .map_err(|_| format!("'{n}' is not a layer count or 'all'")),
        }
    }
}

impl DiskLayers {}

/// Asked between loading steps: true stops the load with
/// `ModelError::Cancelled`.
#[derive(Clone)]
pub struct CancelCheck(std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl CancelCheck {
    pub fn new(f: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        CancelCheck(std::sync::Arc::new(f))
    }

    fn check(this: &Option<Self>) -> Result<(), ModelError> {
        match this {
            Some(c) if (c.0)() => Err(ModelError::Cancelled),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for CancelCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CancelCheck")
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub model_path: PathBuf,
    pub placement: PlacementRequest,
    pub disk_source: DiskSource,
    /// Context length in tokens; `None` uses the model's own.
    pub context_length: Option<usize>,
    /// Cancels the load between steps (each layer placed is one).
    pub cancel: Option<CancelCheck>,
    /// How a Hugging Face folder's weights are stored after loading (a GGUF
    /// loads as stored).
    pub quant: crate::placement::Quant,
    /// Where converted checkpoints are cached (default:
    /// `weights::convert::cache_dir()`).
    pub cache_dir: Option<PathBuf>,
    /// Where a repo id is downloaded from and to.
    pub hub: crate::weights::download::HubOptions,
    /// The largest image (in pixels after resizing) the plan budgets the
    /// vision tower's activations for.
    pub max_image_pixels: usize,
    /// How the KV cache stores keys and values (default f16 both).
    pub kv_types: KvTypes,
    /// A llama.cpp vision projector (`mmproj*.gguf`) for the model; by
    /// default one beside a vision-language model's file is used.
    pub mmproj: Option<PathBuf>,
}

impl LoadOptions {
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        LoadOptions {
            model_path: model_path.into(),
            placement: PlacementRequest {
                offload_dir: PathBuf::from("offload"),
                ..PlacementRequest::default()
            },
            disk_source: DiskSource::ModelFile,
            context_length: None,
            cancel: None,
            quant: crate::placement::Quant::AsStored,
            cache_dir: None,
            hub: Default::default(),
            max_image_pixels: crate::placement::footprint::DEFAULT_MAX_IMAGE_PIXELS,
            kv_types: KvTypes::default(),
            mmproj: None,
        }
    }
}

/// Loading stages, reported with progress.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadStage {
    /// A model fetched from the Hugging Face Hub (a repo id as the path).
    Downloading(crate::weights::download::DownloadProgress),
    /// A Hugging Face folder converted into the cache, layer by layer.
    Quantizing {
        done: usize,
        total: usize,
    },
    Reading,
    /// The plan is made; layers are being placed.
    Planned,
    Layers {
        done: usize,
        total: usize,
    },
}

pub struct Engine {
    pub gguf: GgufFile,
    model: Transformer,
    store: LayerStore,
    /// Shared so a generation can stream text while the engine re-plans.
    tokenizer: std::sync::Arc<TextTokenizer>,
    template: Option<ChatTemplate>,
    kv: KvCache,
    /// The forward pass's reusable buffers.
    scratch: Scratch,
    /// The tokens whose keys and values are in `kv`, in order.
    cached: Vec<u32>,
    placing: placing::Placing,
    sink: Option<crate::telemetry::Sink>,
    /// Told (tokens done, tokens in all) after each chunk of a long prompt.
    prompt_progress: Option<Box<dyn FnMut(usize, usize) + Send>>,
    speeds: report::Speeds,
    layer_ms_per_token: Vec<f64>,
    generation_config: Option<serde_json::Value>,
    /// The vision tower and image processor of a vision-language model.
    vision: Option<vision::VisionModel>,
    /// The llama.cpp projector file the tower was read from, when it is
    /// not in the model's own file.
    mmproj: Option<PathBuf>,
    /// Rotary (t, h, w) positions of the cached tokens (vision-language
    /// models; empty otherwise).
    cached_pos: Vec<[u32; 3]>,
    /// (first token, image hash) of each image in the cache.
    cached_images: Vec<(usize, u64)>,
    /// Speculative decoding's drafter, when on.
    spec: Option<Box<speculative::Speculation>>,
}

/// Finds the model file: a GGUF path, or a folder holding exactly one GGUF.
pub fn resolve_model_path(path: &Path) -> Result<PathBuf, EngineError> {
    if path.is_dir() {
        // A llama.cpp vision model's projector is not the model.
        let mut ggufs = crate::weights::files_with_extension(path, "gguf")
            .map_err(|e| EngineError::Invalid(format!("cannot read {}: {e}", path.display())))?;
        ggufs.retain(|p| !vision::is_mmproj_name(p));
        return match ggufs.len() {
            1 => Ok(ggufs.remove(0)),
            0 => Err(EngineError::Invalid(format!(
                "{} holds no .gguf file (Hugging Face folders come with the checkpoints work)",
                path.display()
            ))),
            n => Err(EngineError::Invalid(format!(
                "{} holds {n} .gguf files; name one",
                path.display()
            ))),
        };
    }
    if !path.exists() {
        return Err(EngineError::Invalid(format!(
            "model file {} does not exist",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

/// The source checkpoint's generation_config.json, when the GGUF was
/// converted from a Hugging Face folder.
fn generation_config(gguf: &GgufFile) -> Option<serde_json::Value> {
    let text = gguf
        .get(crate::weights::convert::HF_GENERATION_CONFIG)
        .and_then(crate::weights::gguf::Value::as_str)?;
    serde_json::from_str(text).ok()
}

/// `path` itself, or for a Hugging Face repo id (`owner/name[@rev][:file]`)
/// that is not a local path, the downloaded snapshot folder or file.
pub fn local_model(
    path: &Path,
    hub: &crate::weights::download::HubOptions,
    cancel: &Option<CancelCheck>,
    progress: &mut dyn FnMut(LoadStage),
) -> Result<PathBuf, EngineError> {
    use crate::weights::download::{download, RepoRef};
    let Some(repo) = path.to_str().and_then(RepoRef::parse) else {
        return Ok(path.to_path_buf());
    };
    download(&repo, hub, &mut |p| {
        progress(LoadStage::Downloading(p.clone()));
        CancelCheck::check(cancel).is_ok()
    })
    .map_err(|e| match e {
        crate::weights::download::DownloadError::Cancelled => ModelError::Cancelled.into(),
        e => EngineError::Invalid(e.to_string()),
    })
}

impl Engine {
    pub fn load(
        opts: &LoadOptions,
        progress: &mut dyn FnMut(LoadStage),
    ) -> Result<Self, EngineError> {
        crate::placement::alloc::configure();
        let local = local_model(&opts.model_path, &opts.hub, &opts.cancel, progress)?;
        let path = if crate::weights::hf::is_hf_folder(&local) {
            let converted = crate::weights::convert::cached_gguf(
                &local,
                opts.quant,
                opts.cache_dir.clone(),
                &mut |done, total| {
                    CancelCheck::check(&opts.cancel)?;
                    progress(LoadStage::Quantizing { done, total });
                    Ok(())
                },
            );
            match converted {
                Ok((p, _)) => p,
                Err(crate::weights::convert::ConvertError::Model(m)) => return Err(m.into()),
                Err(e) => return Err(EngineError::Invalid(e.to_string())),
            }
        } else {
            resolve_model_path(&local)?
        };
        progress(LoadStage::Reading);
        let mut gguf = GgufFile::open(&path)?;
        let mut hp = HParams::from_gguf(&gguf)?;
        let (mut tokenizer, tokenizer_warning) = load_tokenizer(&gguf, &path, &hp)?;
        let generation_config = generation_config(&gguf);
        // generation_config.json's EOS ids end a reply too.
        if let Some(eos) = generation_config
            .as_ref()
            .and_then(|g| g.get("eos_token_id"))
        {
            let ids: Vec<u32> = match eos {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u32)
                    .collect(),
                v => v.as_u64().map(|v| v as u32).into_iter().collect(),
            };
            for id in ids.into_iter().filter(|&i| (i as usize) < hp.n_vocab) {
                if !tokenizer.special.end_of_generation.contains(&id) {
                    tokenizer.special.end_of_generation.push(id);
                }
            }
        }
        // The vocabulary now lives in the tokenizer; its metadata copy (tens
        // of MB for a 150k vocabulary) is not needed again.
        gguf.metadata
            .retain(|_, v| v.as_array().is_none_or(|a| a.len() < 1024));
        // What is resident before any weight (the process, the tokenizer,
        // the tensor table) is measured rather than estimated where the
        // system says.
        crate::placement::alloc::release_free_memory();
        let baseline = crate::telemetry::rss().map(|r| r.current);
        CancelCheck::check(&opts.cancel)?;
        let template = match &tokenizer.chat_template {
            Some(src) => Some(ChatTemplate::new(
                src,
                tokenizer.special.bos.as_ref().map_or("", |b| b.1.as_str()),
                tokenizer.special.eos.as_ref().map_or("", |e| e.1.as_str()),
            )?),
            None => None,
        };
        let context = hp.context_for(opts.context_length)?;
        let file = std::fs::File::open(&path)
            .map_err(|e| EngineError::Invalid(format!("cannot open {}: {e}", path.display())))?;
        let tensor = |name: &str| {
            gguf.tensor(name)
                .ok_or_else(|| ModelError::Format(format!("tensor {name} is missing")))
        };
        // Llama 3's rotary scaling: the divisors llama.cpp stores.
        if let Some(info) = gguf.tensor(crate::weights::convert::ROPE_FREQS) {
            if info.elem_count() != hp.head_dim / 2 {
                return Err(ModelError::Format(format!(
                    "rope_freqs.weight holds {} values, expected {}",
                    info.elem_count(),
                    hp.head_dim / 2
                ))
                .into());
            }
            let factors = crate::model::transformer::to_f32_vec(
                &read_qtensor(&file, info).map_err(ModelError::from)?,
            )?;
            hp.rope_freq_factors = Some(factors);
        }
        let token_embd =
            read_qtensor(&file, tensor("token_embd.weight")?).map_err(ModelError::from)?;
        let norm_info = tensor("output_norm.weight")?;
        let output_norm = crate::model::transformer::to_f32_vec(
            &read_qtensor(&file, norm_info).map_err(ModelError::from)?,
        )?;
        let output = match gguf.tensor("output.weight") {
            Some(info) => Some(read_qtensor(&file, info).map_err(ModelError::from)?),
            None => None,
        };
        let model = Transformer::new(hp.clone(), token_embd, output_norm, output, context)?;
        // On the CPU until the plan is applied (which may move it).
        // A llama.cpp model's tower is a file of its own (`mmproj`): the
        // one named, or the one beside the model.
        let mmproj = match &opts.mmproj {
            Some(p) => Some(p.clone()),
            None if hp.is_multimodal() && gguf.tensor("v.patch_embd.weight").is_none() => {
                vision::find_mmproj(&path)
            }
            None => None,
        };
        let mut vision = vision::load(
            &gguf,
            &file,
            mmproj.as_deref(),
            &tokenizer,
            hp.n_embd,
            &candle_core::Device::Cpu,
            true,
        )?;
        // The bound the plan budgets images for holds for every image of
        // this load, whatever the model's processor file says.
        if let Some(v) = &mut vision {
            v.processor.cap_pixels(opts.max_image_pixels);
        }
        opts.kv_types
            .check(hp.head_dim)
            .map_err(ModelError::Invalid)?;
        let mut footprint =
            Footprint::from_gguf(&gguf, &hp, context, PROMPT_CHUNK).with_kv_types(opts.kv_types);
        if let Some(v) = &vision {
            let cfg = &v.tower.cfg;
            let patches = crate::vision::tower::max_patches(v.processor.max_pixels, cfg.patch_size);
            footprint.vision_bytes = v.tower.bytes() + cfg.activation_bytes(patches);
        }
        if let Some(b) = baseline {
            footprint.cpu_runtime_bytes = b;
        }
        footprint.disk_copy = matches!(opts.disk_source, DiskSource::OffloadFolder(_));
        let request = opts.placement.clone();
        let mut machine = Machine::new();
        let mut budgets = placing::probe(&mut machine, &request, Held::default());
        let gpu = placing::gpu_tier(&mut budgets, &request, &footprint);
        let rates = calibrate::rates(
            &request.offload_dir,
            machine.gpus().first(),
            budgets.gpu_simulated,
        );
        let placement = placing::plan_for(&footprint, &budgets, &request, &rates)?;
        CancelCheck::check(&opts.cancel)?;
        // Budget notes ("no NVIDIA GPU", a simulated tier) stay with the
        // budgets for whoever shows them; notices are for what happened.
        let notices: Vec<Notice> = tokenizer_warning.into_iter().map(Notice).collect();
        let store = LayerStore::new(&gguf, &hp, opts.disk_source.clone(), gpu)?;
        progress(LoadStage::Planned);
        let mut engine = Engine {
            kv: KvCache::for_model(&hp, context, PROMPT_CHUNK, opts.kv_types)?,
            scratch: Scratch::default(),
            gguf,
            model,
            store,
            tokenizer: std::sync::Arc::new(tokenizer),
            generation_config,
            template,
            vision,
            mmproj,
            cached_pos: Vec::new(),
            cached_images: Vec::new(),
            cached: Vec::new(),
            spec: None,
            sink: None,
            prompt_progress: None,
            speeds: report::Speeds::default(),
            layer_ms_per_token: Vec::new(),
            placing: placing::Placing {
                footprint,
                rates,
                budgets,
                request,
                placement: placement.clone(),
                machine,
                notices,
                gpu_base_bytes: 0,
                last_moved: 0,
            },
        };
        engine.apply_placement(placement, &mut |done, total| {
            CancelCheck::check(&opts.cancel)?;
            progress(LoadStage::Layers { done, total });
            Ok(())
        })?;
        crate::placement::alloc::release_free_memory();
        Ok(engine)
    }

    /// One forward pass; a GPU out-of-memory re-plans with less VRAM and
    /// runs the pass again, so the caller never sees it.
    fn step(&mut self, tokens: &[u32], pos: usize, want: LogitsFor) -> Result<&[f32], EngineError> {
        self.step_input(Input::text(tokens, pos), want)
    }

    /// [`Engine::step`] with rotary positions and embedding rows given.
    fn step_input(&mut self, input: Input<'_>, want: LogitsFor) -> Result<&[f32], EngineError> {
        let pos = input.pos;
        let mut retries = self.model.hp.n_layer + 2;
        loop {
            let r = self
                .model
                .forward(&self.store, &mut self.kv, &mut self.scratch, input, want)
                .map(<[f32]>::len);
            match r {
                Ok(len) => {
                    self.after_pass(input.tokens.len());
                    return Ok(&self.scratch.logits()[..len]);
                }
                Err(e) if retries > 0 && e.is_out_of_memory() => {
                    retries -= 1;
                    self.kv.truncate(pos);
                    self.recover(e)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether the chat template switches thinking on and off itself
    /// (Qwen3's `enable_thinking`), rather than by a prompt suffix.
    pub fn thinking_in_template(&self) -> bool {
        self.template
            .as_ref()
            .is_some_and(|t| t.has_thinking_switch())
    }

    /// The prompt suffix that asks for thinking (`think`) or a direct
    /// answer: RoboBrain's `<think>` tags, or for a template with a
    /// thinking switch, the switch set (and no suffix).
    pub fn thinking_prompt(&mut self, think: bool) -> &'static str {
        if self.thinking_in_template() {
            self.set_template_thinking(Some(think));
            return "";
        }
        crate::vision::tasks::thinking_suffix(self.supports_thinking(), think)
    }

    /// Sets a thinking switch of the chat template (`None`: its default).
    pub fn set_template_thinking(&mut self, on: Option<bool>) {
        if let Some(t) = &mut self.template {
            t.set_thinking(on);
        }
    }

    /// Whether this is a RoboBrain model that thinks when asked (from its
    /// metadata and size; see `vision::tasks::thinking_for`).
    pub fn supports_thinking(&self) -> Option<bool> {
        use crate::weights::gguf::Value;
        if self.thinking_in_template() {
            return Some(true);
        }
        let names = ["general.name", "general.basename", "general.finetune"]
            .into_iter()
            .filter_map(|k| self.gguf.get(k).and_then(Value::as_str));
        let text_params = self
            .gguf
            .tensors
            .iter()
            .filter(|t| !t.name.starts_with("v.") && !t.name.starts_with("mm."))
            .map(|t| t.elem_count() as u64)
            .sum();
        crate::vision::tasks::thinking_for(names, text_params)
    }

    /// The weights are random (a file made by `spillway synthesize`).
    pub fn is_synthetic(&self) -> bool {
        crate::weights::synth::is_synthetic(&self.gguf)
    }

    pub fn hparams(&self) -> &HParams {
        &self.model.hp
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn store(&self) -> &LayerStore {
        &self.store
    }

    /// Moves layer `i` to `tier` without touching the conversation.
    pub fn set_tier(&mut self, i: usize, tier: Tier) -> Result<(), EngineError> {
        Ok(self.store.set_tier(i, tier, &mut self.kv)?)
    }

    /// The context length in use, in tokens.
    pub fn context_length(&self) -> usize {
        self.kv.capacity()
    }

    /// Tokens whose keys and values are cached (the conversation so far).
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Bytes of the weights outside the blocks (embeddings, final norm,
    /// output head), from the tensor table.
    pub fn non_layer_bytes(&self) -> u64 {
        self.gguf
            .tensors
            .iter()
            .filter(|t| !t.name.starts_with("blk."))
            .map(|t| t.size_bytes)
            .sum()
    }

    /// How the KV cache stores keys and values.
    pub fn kv_types(&self) -> KvTypes {
        self.kv.types()
    }

    /// Bytes of the KV cache for `tokens` tokens.
    pub fn kv_bytes(&self, tokens: usize) -> u64 {
        let hp = &self.model.hp;
        let types = self.kv.types();
        (0..hp.n_layer)
            .map(|i| hp.kv_bytes(i, tokens, PROMPT_CHUNK, types))
            .sum()
    }

    /// Renders `messages` with the model's chat template and tokenizes the
    /// result. Templates write BOS themselves, so none is added.
    pub fn chat_tokens(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, EngineError> {
        let template = self.template.as_ref().ok_or(TemplateError::Missing)?;
        let text = template.render(messages, add_generation_prompt)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// Tokenizes plain text, with BOS when the model wants it.
    pub fn text_tokens(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenizer.encode(text, true)?)
    }

    /// The model's generation_config.json (a converted Hugging Face
    /// checkpoint): its values are the sampling defaults.
    pub fn generation_config(&self) -> Option<&serde_json::Value> {
        self.generation_config.as_ref()
    }

    /// Forgets the cached conversation.
    pub fn reset(&mut self) {
        self.rewind(0);
    }
}

/// The tokenizer of a GGUF: a `tokenizer.json` beside the file wins when it
/// is this model's (the authoritative Hugging Face form: the same tokens at
/// the same ids as the GGUF's vocabulary, or, for a GGUF without one, a
/// vocabulary that fits the embeddings); otherwise the GGUF's own metadata,
/// and a warning saying why the file beside it was not used.
fn load_tokenizer(
    gguf: &GgufFile,
    path: &Path,
    hp: &HParams,
) -> Result<(TextTokenizer, Option<String>), EngineError> {
    let Some(dir) = path.parent().filter(|d| d.join("tokenizer.json").is_file()) else {
        return Ok((TextTokenizer::from_gguf(gguf)?, None));
    };
    let beside = dir.join("tokenizer.json");
    let own = gguf
        .get("tokenizer.ggml.tokens")
        .and_then(crate::weights::gguf::Value::as_array);
    let why_not = match TextTokenizer::from_hf_dir(dir) {
        Err(e) => format!("it could not be read ({e})"),
        Ok(tok) => match own {
            None if tok.vocab_size() <= hp.n_vocab => return Ok((tok, None)),
            None => format!(
                "its {} tokens do not fit the model's {}",
                tok.vocab_size(),
                hp.n_vocab
            ),
            Some(tokens) => {
                let differs = tokens
                    .iter()
                    .enumerate()
                    .find(|(id, t)| tok.token(*id as u32).as_deref() != t.as_str());
                match differs {
                    None if tok.vocab_size() == tokens.len() => return Ok((tok, None)),
                    None => format!(
                        "it has {} tokens and the model {}",
                        tok.vocab_size(),
                        tokens.len()
                    ),
                    Some((id, t)) => format!(
                        "its token {id} is {:?} where the model's is {:?}",
                        tok.token(id as u32).unwrap_or_default(),
                        t.as_str().unwrap_or_default()
                    ),
                }
            }
        },
    };
    let warning = format!(
        "{} is not this model's tokenizer ({why_not}); using the one inside the GGUF",
        beside.display()
    );
    Ok((TextTokenizer::from_gguf(gguf)?, Some(warning)))
}
