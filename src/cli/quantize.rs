//! `spillway quantize`: a Hugging Face folder converted to a GGUF under a
//! quantization scheme, into a file or the cache.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::placement::Quant;
use crate::weights::convert;
use crate::weights::hf::{is_hf_folder, HfFolder};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// A Hugging Face model folder (config.json + safetensors).
    #[arg(value_name = "SRC")]
    src: PathBuf,
    /// q4_k_m (4-bit), q8_0 (8-bit), f16, bf16, or none (as stored).
    #[arg(long, value_name = "SCHEME")]
    to: Quant,
    /// The GGUF to write (default: the cache entry later loads use).
    #[arg(short = 'o', long, value_name = "OUT.gguf")]
    out: Option<PathBuf>,
    /// Print one JSON object (output path, seconds, peak memory).
    #[arg(long)]
    json: bool,
}

pub fn run(a: QuantizeArgs) -> anyhow::Result<ExitCode> {
    if !is_hf_folder(&a.src) {
        anyhow::bail!(
            "{} is not a Hugging Face model folder (config.json and .safetensors weights)",
            a.src.display()
        );
    }
    let start = Instant::now();
    let bar = super::progress_bar("quantizing");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        Ok(())
    };
    let (out, converted) = match &a.out {
        Some(out) => {
            let folder = HfFolder::open(&a.src)?;
            convert::convert(&folder, a.to, out, &mut progress)
                .with_context(|| format!("cannot convert {}", a.src.display()))?;
            (out.clone(), true)
        }
        None => convert::cached_gguf(&a.src, a.to, None, &mut progress)
            .with_context(|| format!("cannot convert {}", a.src.display()))?,
    };
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let peak = crate::telemetry::rss().map(|r| r.peak);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "output": out,
                "converted": converted,
                "bytes": bytes,
                "seconds": seconds,
                "peak_rss_bytes": peak,
            })
        );
    } else {
        let what = if converted {
            "wrote"
        } else {
            "already cached:"
        };
        println!(
            "{what} {} ({:.1} MiB, {seconds:.1} s)",
            out.display(),
            bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(ExitCode::SUCCESS)
}
