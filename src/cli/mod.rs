//! The command line: the contract that tests, benchmarks and scripts rely
//! on. Each subcommand drives the same engine the desktop app uses.

mod bench;
mod download;
mod fuzz;
mod generate;
mod inspect;
mod perplexity;
mod plan;
mod progress;
mod quantize;
mod serve;
mod soak;
mod synthesize;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::engine::{DiskLayers, Engine, LoadOptions, LoadStage, PlacementRequest};
use crate::placement::offload;
use crate::placement::store::DiskSource;
use crate::placement::{planner, BudgetOptions, Mode};

#[derive(Parser, Debug)]
#[command(
    name = "spillway",
    version,
    about = "Chat with quantized language models; every layer in VRAM, RAM or on disk",
    long_about = "Chat with quantized language models locally. Each transformer layer lives in \
                  VRAM (with the GPU build), RAM or on disk, so a model never fails to load \
                  because memory is small.\n\nWith no subcommand Spillway opens its window \
                  (`--model PATH` loads that model in it)."
)]
pub struct Cli {
    /// Open the window with this GGUF file or model folder loaded.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// A YAML file overriding the built-in defaults (config/config.yaml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a reply to a prompt or a conversation, streamed to stdout.
    Generate(generate::GenerateArgs),
    /// Serve the model over an OpenAI-compatible HTTP API
    /// (/v1/chat/completions, /v1/models, /health, /v1/spillway/status).
    Serve(serve::ServeArgs),
    /// Perplexity of a text file, computed as llama.cpp computes it.
    Perplexity(perplexity::PerplexityArgs),
    /// Prompt and decode speed: median tokens/s over repeated runs.
    Bench(bench::BenchArgs),
    /// Architecture, hyper-parameters and the tensor table of a model.
    Inspect(inspect::InspectArgs),
    /// Where each layer would go (VRAM, RAM, disk) and the predicted speed,
    /// from a GGUF's tensor table or a config.json, without loading weights.
    Plan(plan::PlanArgs),
    /// Convert a Hugging Face model folder to a GGUF (4-bit, 8-bit, 16-bit
    /// or as stored), into a file or the cache later loads use.
    Quantize(quantize::QuantizeArgs),
    /// Write a GGUF with random weights in the exact shape, tensor types and
    /// metadata of a Hugging Face config.json (speed and memory tests at
    /// real scale; llama.cpp loads it too).
    Synthesize(synthesize::SynthesizeArgs),
    /// Download a model from the Hugging Face Hub into the Hugging Face
    /// cache (resumed if interrupted, checked against the Hub's sizes and
    /// checksums).
    Download(download::DownloadArgs),
    /// Fuzz the readers of model files, configs, templates, images, history
    /// and settings (each input in a memory-limited child process).
    Fuzz(fuzz::FuzzArgs),
    /// The window's logic without a display, chatting until killed (the
    /// kill-loop test).
    #[command(hide = true)]
    SoakWindow(soak::SoakArgs),
}

/// Placement options every command that places a model shares.
#[derive(Args, Debug, Clone, Default)]
pub struct PlacementArgs {
    /// auto, full-gpu, cpu-offload, disk-offload or cpu-only (default: the
    /// config's `offload.mode` / `model.device_map`, else auto).
    #[arg(long, value_name = "MODE")]
    mode: Option<Mode>,
    /// Put exactly this many layers (the last ones) on the GPU.
    #[arg(long, value_name = "N", conflicts_with = "mode")]
    gpu_layers: Option<usize>,
    /// VRAM Spillway may use, e.g. 6GiB. Without an NVIDIA GPU this
    /// simulates a GPU tier of that size (CPU-backed).
    #[arg(long, value_name = "SIZE", value_parser = planner::parse_bytes)]
    vram: Option<u64>,
    /// RAM Spillway may use, e.g. 16GiB (`plan`: as if the machine had it).
    #[arg(long, value_name = "SIZE", value_parser = planner::parse_bytes)]
    ram: Option<u64>,
    /// Manual override: the first N layers that are not on the GPU go to
    /// disk (`all`: every one).
    #[arg(long, value_name = "N|all")]
    disk_layers: Option<DiskLayers>,
    /// Run a simulated GPU tier (`--vram` without a GPU) as candle blocks on
    /// the CPU device, the code path of a real GPU (for testing it).
    #[arg(long, hide = true)]
    simulate_with_candle: bool,
    /// Experts each mixture-of-experts layer on disk keeps cached in RAM
    /// (default: as many as the RAM budget allows); the others are read
    /// from disk when a token is routed to them.
    #[arg(long, value_name = "N")]
    expert_cache: Option<usize>,
    /// Read disk-tier experts only when a token is routed to them, not
    /// ahead from the layer before's prediction.
    #[arg(long)]
    no_expert_read_ahead: bool,
}

impl PlacementArgs {
    fn request(
        &self,
        config: &Config,
        offload_dir: PathBuf,
        ram_as_given: bool,
    ) -> PlacementRequest {
        PlacementRequest {
            mode: self
                .gpu_layers
                .map(Mode::GpuLayers)
                .or(self.mode)
                .unwrap_or(config.mode),
            budget: BudgetOptions {
                vram_bytes: self.vram,
                ram_bytes: self.ram,
                ram_as_given,
            },
            disk_layers: self.disk_layers,
            offload_dir,
            fail_gpu_alloc: None,
            simulate_with_candle: self.simulate_with_candle,
            expert_cache: self.expert_cache,
            no_expert_read_ahead: self.no_expert_read_ahead,
        }
    }
}

/// Options every command that loads a model shares.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, a folder holding one, or a Hugging Face model folder
    /// (config.json + safetensors), converted once into the cache.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// How a Hugging Face folder's weights are stored: q4_k_m (4-bit),
    /// q8_0 (8-bit), f16, bf16, or none (as stored). Default: the config's
    /// `model.quant` (or `load_in_4bit`/`load_in_8bit`), else none.
    #[arg(long, value_name = "SCHEME")]
    quant: Option<crate::placement::Quant>,
    /// Compute precision: auto or f32, what the CPU and GPU kernels compute
    /// in (f16 and bf16 are refused, not silently computed in f32); f32
    /// also keeps the KV cache in f32 unless --cache-type-k/-v say else.
    #[arg(long, value_name = "DTYPE", value_parser = parse_dtype)]
    dtype: Option<crate::config::ComputeDType>,
    #[command(flatten)]
    placement: PlacementArgs,
    /// Read disk layers from copies in this folder instead of the model file
    /// (for a model on slow or removable storage).
    #[arg(long, value_name = "DIR")]
    offload_dir: Option<PathBuf>,
    /// Context length in tokens (default: the config's, else the model's own).
    #[arg(long, value_name = "N")]
    ctx: Option<usize>,
    /// Compute threads, or `auto`: the cores this process may use (its CPU
    /// affinity and cgroup quota), leaving one for the desktop from six up.
    /// Default: the config's, else auto.
    #[arg(long, value_name = "N|auto", value_parser = parse_threads)]
    threads: Option<Threads>,
    /// The largest image (pixels after resizing) the plan budgets for; set
    /// by commands that take images (`generate --max-pixels`).
    #[arg(skip)]
    pub max_image_pixels: Option<usize>,
    /// A llama.cpp vision projector (`mmproj*.gguf`) for a vision-language
    /// GGUF (default: one beside the model file).
    #[arg(long, value_name = "MMPROJ.gguf")]
    mmproj: Option<PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub kv: KvArgs,
}

/// How the KV cache stores keys and values (llama.cpp's option names).
#[derive(Args, Debug, Clone, Default)]
pub struct KvArgs {
    /// Key cache type: f32, f16, q8_0 or q4_0 (default: the config's
    /// `runtime.cache_type_k`, else f16). Keys are the more sensitive half.
    #[arg(long, value_name = "TYPE")]
    cache_type_k: Option<crate::kernels::kv::CacheType>,
    /// Value cache type: f32, f16, q8_0 or q4_0 (default: the config's
    /// `runtime.cache_type_v`, else f16).
    #[arg(long, value_name = "TYPE")]
    cache_type_v: Option<crate::kernels::kv::CacheType>,
}

impl KvArgs {
    pub fn types(&self, config: &Config) -> crate::kernels::kv::KvTypes {
        crate::kernels::kv::KvTypes::new(
            self.cache_type_k.unwrap_or(config.kv_types.k),
            self.cache_type_v.unwrap_or(config.kv_types.v),
        )
    }
}

/// Speculative decoding: a drafter proposes tokens, the model checks them
/// in one pass (greedy output is unchanged, sampling keeps its
/// distribution).
#[derive(Args, Debug, Clone, Default)]
pub struct SpecArgs {
    /// A draft model sharing the model's tokenizer (a small model of the
    /// same family), placed in the fastest tier this model leaves free.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["draft_quant", "lookup_ngram"])]
    pub draft_model: Option<PathBuf>,
    /// Self-draft: the model itself quantized to SCHEME (q4_k_m, q8_0),
    /// made once into the cache, drafts for it.
    #[arg(long, value_name = "SCHEME", conflicts_with = "lookup_ngram")]
    pub draft_quant: Option<crate::placement::Quant>,
    /// Prompt lookup: draft the continuation of the latest earlier text
    /// matching the last N tokens (N from 1 to 8; 3 suits most text).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=8))]
    pub lookup_ngram: Option<u64>,
    /// The most tokens drafted for one pass (1 to 16; default 8). The
    /// number drafted follows the measured acceptance and pass costs.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=16))]
    pub draft_tokens: Option<u64>,
    /// Always draft --draft-tokens tokens instead of adapting the number.
    #[arg(long)]
    pub draft_fixed: bool,
    /// Benchmarks of synthetic (random-weight) models: accept each drafted
    /// token with this probability whatever the model says.
    #[arg(long, value_name = "RATE", hide = true)]
    pub force_acceptance: Option<f64>,
}

impl SpecArgs {
    pub fn options(&self) -> crate::engine::SpecOptions {
        use crate::engine::Drafting;
        let drafting = match (&self.draft_model, self.draft_quant, self.lookup_ngram) {
            (Some(p), _, _) => Drafting::Model(p.clone()),
            (_, Some(q), _) => Drafting::SelfDraft(q),
            (_, _, Some(n)) => Drafting::Lookup(n as usize),
            _ => Drafting::Off,
        };
        crate::engine::SpecOptions {
            drafting,
            max_draft: self
                .draft_tokens
                .map_or(crate::engine::speculative::DEFAULT_DRAFT, |k| k as usize),
            cache_dir: None,
            fixed: self.draft_fixed,
            forced_acceptance: self.force_acceptance,
        }
    }
}

impl ModelArgs {
    /// The KV cache types: the flags', else f32 under `--dtype f32` (all
    /// of the model's state in f32, as a reference run wants), else the
    /// config's.
    fn kv_types(&self, config: &Config) -> crate::kernels::kv::KvTypes {
        let all_f32 = self.dtype.or(config.dtype) == Some(crate::config::ComputeDType::F32);
        if all_f32 && self.kv.cache_type_k.is_none() && self.kv.cache_type_v.is_none() {
            return crate::kernels::kv::KvTypes::F32;
        }
        self.kv.types(config)
    }

    fn load_options(&self, config: &Config) -> LoadOptions {
        LoadOptions {
            model_path: self.model.clone(),
            placement: self.placement.request(
                config,
                self.offload_dir
                    .clone()
                    .unwrap_or_else(|| config.offload_folder.clone()),
                false,
            ),
            disk_source: match &self.offload_dir {
                Some(dir) => DiskSource::OffloadFolder(dir.clone()),
                None if config.copy_disk_layers => {
                    DiskSource::OffloadFolder(config.offload_folder.clone())
                }
                None => DiskSource::ModelFile,
            },
            context_length: self.ctx.or(config.context_length),
            cancel: None,
            quant: self.quant.unwrap_or(config.quant),
            cache_dir: None,
            hub: Default::default(),
            max_image_pixels: self
                .max_image_pixels
                .unwrap_or(crate::placement::footprint::DEFAULT_MAX_IMAGE_PIXELS),
            kv_types: self.kv_types(config),
            mmproj: self.mmproj.clone(),
        }
    }

    /// Sets the compute threads, then loads the model with a progress bar.
    fn load(&self, config: &Config) -> anyhow::Result<Engine> {
        set_threads(match self.threads {
            Some(Threads::Auto) => None,
            Some(Threads::Count(n)) => Some(n),
            None => config.threads,
        })?;
        let hf = crate::weights::hf::is_hf_folder(&self.model)
            || self
                .model
                .to_str()
                .and_then(crate::weights::download::RepoRef::parse)
                .is_some();
        if !hf
            && self
                .quant
                .is_some_and(|q| q != crate::placement::Quant::AsStored)
        {
            anyhow::bail!(
                "{} is a GGUF, loaded as stored; --quant applies to Hugging Face folders (config.json + safetensors)",
                self.model.display()
            );
        }
        // Refused rather than accepted and ignored: the kernels compute in
        // f32 whatever the weights' stored type.
        match self.dtype.or(config.dtype) {
            None | Some(crate::config::ComputeDType::F32) => {}
            Some(d) => anyhow::bail!(
                "a compute dtype of {d:?} is not supported: Spillway computes in float32 (weights keep their stored or quantized type); use --dtype auto or float32, or set model.dtype: auto in the config"
            ),
        }
        let bar = progress_bar("loading");
        let engine = Engine::load(&self.load_options(config), &mut |stage| match stage {
            LoadStage::Downloading(d) => {
                bar.set_length(d.total_bytes);
                bar.set_position(d.done_bytes);
                bar.set_message(format!(
                    "downloading {} ({}/{}) {:.1} MiB/s",
                    d.file,
                    d.index + 1,
                    d.files,
                    d.bytes_per_sec / (1u64 << 20) as f64
                ));
            }
            LoadStage::Quantizing { done, total } => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message("quantizing");
            }
            LoadStage::Reading => bar.set_message("reading"),
            LoadStage::Planned => bar.set_message("placing"),
            LoadStage::Layers { done, total } => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message("layers");
            }
        })
        .with_context(|| format!("cannot load {}", self.model.display()));
        bar.finish_and_clear();
        let mut engine = engine?;
        let spec = self.spec.options();
        if spec.drafting != crate::engine::Drafting::Off {
            let bar = progress_bar("draft");
            let r = engine.set_speculation(&spec, &mut |stage| match stage {
                LoadStage::Quantizing { done, total } => {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                    bar.set_message("making the self-draft");
                }
                LoadStage::Layers { done, total } => {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                    bar.set_message("draft layers");
                }
                _ => bar.set_message("loading the draft"),
            });
            bar.finish_and_clear();
            for n in r.context("cannot set up speculative decoding")? {
                eprintln!("note: draft: {}", n.0);
            }
        }
        if engine.is_synthetic() {
            eprintln!(
                "warning: {} has {}",
                self.model.display(),
                crate::weights::synth::SYNTHETIC_NOTICE
            );
        }
        report_notices(&mut engine);
        Ok(engine)
    }
}

fn parse_dtype(s: &str) -> Result<crate::config::ComputeDType, String> {
    crate::config::ComputeDType::parse(s)?
        .ok_or_else(|| "auto is the default; name f32, f16 or bf16".to_string())
}

/// Prints what happened to placement (notes on budgets, re-plans after an
/// out-of-memory) on stderr.
fn report_notices(engine: &mut Engine) {
    for n in engine.take_notices() {
        eprintln!("note: {}", n.0);
    }
}

/// `--threads`: a count or `auto`.
#[derive(Debug, Clone, Copy)]
pub enum Threads {
    Auto,
    Count(usize),
}

fn parse_threads(s: &str) -> Result<Threads, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Threads::Auto);
    }
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (or auto)".into()),
        Ok(n) => Ok(Threads::Count(n)),
        Err(_) => Err(format!("`{s}` is neither a thread count nor auto")),
    }
}

/// Sizes the compute thread pool once, before any tensor work.
fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let n = match threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => crate::kernels::pool::default_threads(),
    };
    crate::kernels::pool::set_threads(n);
    // candle (used for loading, not the hot path) sizes its parallelism from
    // this variable. Set before any other thread exists.
    // SAFETY (edition 2021: safe call): single-threaded at this point.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(())
}

/// A progress bar on stderr; invisible when stderr is not a terminal.
fn progress_bar(prefix: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// A flag set by Ctrl-C, so long work stops between tokens and cleans up
/// (offload files included) instead of dying mid-write.
fn cancel_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // A second Ctrl-C means now.
            std::process::exit(130);
        }
    });
    flag
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // `synthesize --config CONFIG.json` names a model's config.json, not
    // Spillway's YAML settings, which it does not use.
    if let Some(Command::Synthesize(a)) = cli.command {
        return synthesize::run(a, cli.config);
    }
    if let Some(Command::Fuzz(a)) = cli.command {
        return fuzz::run(a);
    }
    if let Some(Command::SoakWindow(a)) = cli.command {
        return soak::run(a);
    }
    // An explicit --config must be right; the user's copy in the platform
    // config folder gets a message and the defaults when it is not.
    let mut config_problem = None;
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => match crate::config::user_config_path().filter(|p| p.is_file()) {
            Some(path) => Config::load(&path).or_else(|e| {
                eprintln!("warning: {e}; using the built-in defaults");
                config_problem = Some(format!("{e}. The built-in defaults are in use."));
                Config::defaults()
            })?,
            None => Config::defaults()?,
        },
    };
    // Offload sessions of processes that died are removed at every start.
    let _ = offload::clean_stale(&config.offload_folder);
    match cli.command {
        None => {
            crate::ui::run(config, cli.model, config_problem)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Generate(a)) => generate::run(a, &config),
        Some(Command::Serve(a)) => serve::run(a, &config),
        Some(Command::Perplexity(a)) => perplexity::run(a, &config),
        Some(Command::Bench(a)) => bench::run(a, &config),
        Some(Command::Inspect(a)) => inspect::run(a),
        Some(Command::Plan(a)) => plan::run(a, &config),
        Some(Command::Quantize(a)) => quantize::run(a),
        Some(Command::Synthesize(a)) => synthesize::run(a, None),
        Some(Command::Download(a)) => download::run(a),
        Some(Command::Fuzz(a)) => fuzz::run(a),
        Some(Command::SoakWindow(a)) => soak::run(a),
    }
}
