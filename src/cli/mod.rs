//! The command line: the contract that tests, benchmarks and scripts rely
//! on. Each subcommand drives the same engine the desktop app uses.

mod bench;
mod generate;
mod inspect;
mod perplexity;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::engine::{DiskLayers, Engine, LoadOptions, LoadStage};
use crate::placement::offload;
use crate::placement::store::DiskSource;

#[derive(Parser, Debug)]
#[command(
    name = "spillway",
    version,
    about = "Chat with quantized language models; every layer in VRAM, RAM or on disk",
    long_about = "Chat with quantized language models locally. Each transformer layer lives in \
                  RAM or on disk (VRAM with the GPU build), so a model never fails to load because \
                  memory is small.\n\nWith no subcommand Spillway will open its window (the \
                  desktop app is in progress); until then it prints this help."
)]
pub struct Cli {
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
    /// Perplexity of a text file, computed as llama.cpp computes it.
    Perplexity(perplexity::PerplexityArgs),
    /// Prompt and decode speed: median tokens/s over repeated runs.
    Bench(bench::BenchArgs),
    /// Architecture, hyper-parameters and the tensor table of a model.
    Inspect(inspect::InspectArgs),
}

/// Options every command that loads a model shares.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, or a folder holding one.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// How many layers live on disk (the last ones), or `all`.
    #[arg(long, value_name = "N|all", default_value = "0")]
    disk_layers: DiskLayers,
    /// Read disk layers from copies in this folder instead of the model file
    /// (for a model on slow or removable storage).
    #[arg(long, value_name = "DIR")]
    offload_dir: Option<PathBuf>,
    /// Context length in tokens (default: the config's, else the model's own).
    #[arg(long, value_name = "N")]
    ctx: Option<usize>,
    /// Compute threads (default: the config's, else every core, leaving one
    /// for the desktop from six cores up).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

impl ModelArgs {
    fn load_options(&self, config: &Config) -> LoadOptions {
        LoadOptions {
            model_path: self.model.clone(),
            disk_layers: self.disk_layers,
            disk_source: match &self.offload_dir {
                Some(dir) => DiskSource::OffloadFolder(dir.clone()),
                None if config.copy_disk_layers => {
                    DiskSource::OffloadFolder(config.offload_folder.clone())
                }
                None => DiskSource::ModelFile,
            },
            context_length: self.ctx.or(config.context_length),
        }
    }

    /// Sets the compute threads, then loads the model with a progress bar.
    fn load(&self, config: &Config) -> anyhow::Result<Engine> {
        set_threads(self.threads.or(config.threads))?;
        let bar = progress_bar("loading");
        let engine = Engine::load(&self.load_options(config), &mut |stage| match stage {
            LoadStage::Reading => bar.set_message("reading"),
            LoadStage::Layers { done, total } => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message("layers");
            }
        })
        .with_context(|| format!("cannot load {}", self.model.display()));
        bar.finish_and_clear();
        engine
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
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::defaults()?,
    };
    // Offload sessions of processes that died are removed at every start.
    let _ = offload::clean_stale(&config.offload_folder);
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            println!();
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Generate(a)) => generate::run(a, &config),
        Some(Command::Perplexity(a)) => perplexity::run(a, &config),
        Some(Command::Bench(a)) => bench::run(a, &config),
        Some(Command::Inspect(a)) => inspect::run(a),
    }
}
