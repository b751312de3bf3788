//! `spillway synthesize`: a GGUF with random weights in the exact shape of
//! a Hugging Face config.json, for speed and memory tests at real scale.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::placement::Quant;
use crate::weights::synth::{self, SynthOptions};

#[derive(Args, Debug)]
pub struct SynthesizeArgs {
    /// The Hugging Face config.json to give shape to (the same as
    /// `--config CONFIG.json`); preprocessor_config.json,
    /// generation_config.json and chat_template.json beside it are kept.
    #[arg(value_name = "CONFIG.json")]
    model_config: Option<PathBuf>,
    /// q4_k_m, q8_0, f16 or bf16 (none: the config's torch_dtype).
    #[arg(long, value_name = "SCHEME")]
    quant: Quant,
    /// The GGUF to write.
    #[arg(short = 'o', long, value_name = "OUT.gguf")]
    out: PathBuf,
    /// Seed of the random weights (the same seed gives the same file).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A GGUF whose tokenizer to use, cut or padded to the config's
    /// vocabulary (default: SmolLM2's, built in).
    #[arg(long, value_name = "GGUF")]
    tokenizer: Option<PathBuf>,
    /// Skew a mixture-of-experts router as trained ones are: in each layer
    /// the expert of rank r (a seeded order) gets its router row scaled by
    /// (r + 1)^-S, so a few experts win most tokens. 0: random weights'
    /// nearly uniform routing.
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    router_skew: f32,
    /// Print one JSON object (path, bytes, seconds, MB/s, peak memory).
    #[arg(long)]
    json: bool,
}

/// `config`: the global `--config`, which here names the config.json.
pub fn run(a: SynthesizeArgs, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let Some(model_config) = a.model_config.clone().or(config) else {
        anyhow::bail!("name the model's config.json: spillway synthesize --config CONFIG.json --quant q4_k_m -o OUT.gguf");
    };
    let start = Instant::now();
    let bar = super::progress_bar("synthesizing");
    let opts = SynthOptions {
        config_path: model_config.clone(),
        quant: a.quant,
        seed: a.seed,
        tokenizer: a.tokenizer.clone(),
        router_skew: a.router_skew,
    };
    let report = synth::synthesize(&opts, &a.out, &mut |done, total| {
        bar.set_length(total >> 20);
        bar.set_position(done >> 20);
    })
    .with_context(|| format!("cannot synthesize {}", model_config.display()))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let peak = crate::telemetry::rss().map(|r| r.peak);
    let mb_per_s = report.file_bytes as f64 / 1e6 / seconds.max(1e-9);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "output": a.out,
                "tensors": report.tensors.len(),
                "weight_bytes": report.weight_bytes,
                "file_bytes": report.file_bytes,
                "tokens_kept": report.tokens_kept,
                "tokens_padded": report.tokens_padded,
                "seconds": seconds,
                "mb_per_s": mb_per_s,
                "peak_rss_bytes": peak,
            })
        );
    } else {
        println!(
            "wrote {} ({} tensors, {:.2} GB, {seconds:.1} s, {mb_per_s:.0} MB/s); {}",
            a.out.display(),
            report.tensors.len(),
            report.file_bytes as f64 / 1e9,
            synth::SYNTHETIC_NOTICE
        );
    }
    Ok(ExitCode::SUCCESS)
}
