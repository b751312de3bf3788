//! `spillway bench`: prompt (pp) and decode (tg) speed as llama-bench
//! measures them, the median of repeated runs, optionally with a cold page
//! cache for the disk tier.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Args;

use crate::engine::Engine;
use crate::model::transformer::argmax;
use crate::placement::Tier;
use crate::telemetry;

use super::ModelArgs;
use crate::config::Config;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length for the prompt-processing test (0 skips it).
    #[arg(long, value_name = "N", default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens for the decode test (0 skips it).
    #[arg(long, value_name = "N", default_value_t = 128)]
    gen_tokens: usize,
    /// Runs of each test; the median is reported.
    #[arg(long, value_name = "N", default_value_t = 3)]
    repetitions: usize,
    /// Drop the model file from the page cache before each run and each
    /// decode step, so every disk-layer read comes from the device (Linux).
    #[arg(long)]
    cold: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Asks the kernel to forget the file's cached pages.
fn drop_page_cache(path: &std::path::Path) {
    #[cfg(target_os = "linux")]
    if let Ok(f) = std::fs::File::open(path) {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a file descriptor we own.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
}

/// llama-bench's synthetic prompt: fixed, varied ids inside the vocabulary.
fn synthetic_tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

struct Timed {
    tokens_per_sec: f64,
    disk_wait_secs: f64,
    disk_bytes: u64,
}

fn timed(
    engine: &mut Engine,
    n: usize,
    f: impl FnOnce(&mut Engine) -> anyhow::Result<()>,
) -> anyhow::Result<Timed> {
    let stats = &engine.store().stats;
    let (w0, b0) = (
        stats.wait_nanos.load(Ordering::Relaxed),
        stats.bytes_read.load(Ordering::Relaxed),
    );
    let t = Instant::now();
    f(engine)?;
    let secs = t.elapsed().as_secs_f64();
    let stats = &engine.store().stats;
    Ok(Timed {
        tokens_per_sec: n as f64 / secs,
        disk_wait_secs: (stats.wait_nanos.load(Ordering::Relaxed) - w0) as f64 / 1e9,
        disk_bytes: stats.bytes_read.load(Ordering::Relaxed) - b0,
    })
}

pub fn run(a: BenchArgs, config: &Config) -> anyhow::Result<ExitCode> {
    if a.repetitions == 0 {
        anyhow::bail!("--repetitions must be at least 1");
    }
    let mut engine = a.model.load(config)?;
    let path = engine.gguf.path.clone();
    let vocab = engine.hparams().n_vocab;
    let never = AtomicBool::new(false);
    let ctx = engine.context_length();
    if a.prompt_tokens >= ctx || a.gen_tokens + 1 >= ctx {
        anyhow::bail!("the test lengths exceed the context ({ctx} tokens); raise --ctx");
    }
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let mut pp_runs = Vec::new();
    let mut tg_runs = Vec::new();
    for _ in 0..a.repetitions {
        if a.prompt_tokens > 0 {
            engine.reset();
            if a.cold {
                drop_page_cache(&path);
            }
            let tokens = synthetic_tokens(a.prompt_tokens, vocab);
            let r = timed(&mut engine, a.prompt_tokens, |e| {
                e.feed(&tokens, &never)?;
                Ok(())
            })?;
            pp.push(r.tokens_per_sec);
            pp_runs.push(r);
        }
        if a.gen_tokens > 0 {
            engine.reset();
            if a.cold {
                drop_page_cache(&path);
            }
            let first = synthetic_tokens(1, vocab);
            let n = a.gen_tokens;
            let cold = a.cold;
            let r = timed(&mut engine, n, |e| {
                let mut logits = e.feed(&first, &never)?.unwrap_or_default();
                for _ in 1..n {
                    let t = argmax(&logits);
                    if cold {
                        drop_page_cache(&path);
                    }
                    logits = e.feed(&[t], &never)?.unwrap_or_default();
                }
                Ok(())
            })?;
            tg.push(r.tokens_per_sec);
            tg_runs.push(r);
        }
    }
    engine.reset();
    let store = engine.store();
    let disk_layers = store.tiers().iter().filter(|t| **t == Tier::Disk).count();
    let pp_med = median(&mut pp);
    let tg_med = median(&mut tg);
    let runs = |v: &[Timed]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|r| {
                serde_json::json!({"tokens_per_sec": r.tokens_per_sec,
                    "disk_wait_secs": r.disk_wait_secs, "disk_bytes": r.disk_bytes})
            })
            .collect()
    };
    let threads = crate::kernels::pool::threads();
    let isa = crate::kernels::isa::active().name();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": path.display().to_string(),
                "threads": threads,
                "isa": isa,
                "disk_layers": disk_layers,
                "cold": a.cold,
                "prompt_tokens": a.prompt_tokens,
                "gen_tokens": a.gen_tokens,
                "pp_tokens_per_sec": pp_med,
                "tg_tokens_per_sec": tg_med,
                "pp_runs": runs(&pp_runs),
                "tg_runs": runs(&tg_runs),
                "peak_rss_bytes": telemetry::rss().map(|r| r.peak),
            })
        );
    } else {
        println!(
            "{} | threads {threads} ({isa}) | disk layers {disk_layers}/{}{}",
            path.display(),
            store.n_layers(),
            if a.cold { " (cold cache)" } else { "" }
        );
        if a.prompt_tokens > 0 {
            println!("pp{:<5} {pp_med:8.2} t/s", a.prompt_tokens);
        }
        if a.gen_tokens > 0 {
            println!("tg{:<5} {tg_med:8.2} t/s", a.gen_tokens);
        }
    }
    Ok(ExitCode::SUCCESS)
}
