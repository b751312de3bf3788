//! `spillway bench`: prompt (pp) and decode (tg) speed as llama-bench
//! measures them, the median of repeated runs; optionally with a cold page
//! cache for the disk tier, the disk tier's bound (token time against
//! compute time and disk bytes over the disk's measured bandwidth), and
//! llama.cpp's llama-bench run alternately on the same model for ratios.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Args;
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::model::transformer::argmax;
use crate::placement::store::ExpertCounts;
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
    /// Tokens already in the context before each test (llama-bench's
    /// `-d`): attention then reads this many cached keys and values.
    #[arg(long, value_name = "N", default_value_t = 0)]
    depth: usize,
    /// Runs of each test; the median is reported.
    #[arg(long, value_name = "N", default_value_t = 3)]
    repetitions: usize,
    /// Drop the model file from the page cache before each run and each
    /// decode step, so every disk-layer read comes from the device (Linux).
    #[arg(long)]
    cold: bool,
    /// With disk layers: before each decode run, measure the decode with the
    /// disk layers in RAM (compute time) and the disk's sequential read
    /// bandwidth, and report token time / max(compute, disk bytes / bandwidth).
    #[arg(long)]
    disk_bound: bool,
    /// Run this llama-bench (llama.cpp) after each round, same model, threads
    /// and sizes, and report Spillway / llama.cpp ratios.
    #[arg(long, value_name = "LLAMA_BENCH")]
    compare_llama: Option<PathBuf>,
    /// Extra arguments for that llama-bench, split at spaces (e.g.
    /// ik_llama.cpp's `-rtr 1` to repack its weights at load). An
    /// ik_llama.cpp build is recognised by its options (`-fa 1`, no `-d`).
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        requires = "compare_llama"
    )]
    compare_args: Option<String>,
    /// Measure the vision tower alone instead: encode this image
    /// `--repetitions` times (after one untimed run) and report seconds per
    /// image and patches per second.
    #[arg(long, value_name = "PNG")]
    image: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The vision tower alone on one image: seconds per encode (median and
/// best of `--repetitions` after one untimed run), images and patches per
/// second, and which matmul the tower's CPU path used.
fn bench_tower(engine: &Engine, image: &Path, a: &BenchArgs) -> anyhow::Result<ExitCode> {
    let v = engine
        .vision()
        .ok_or_else(|| anyhow::anyhow!("--image needs a vision-language model"))?;
    let rgb = crate::vision::preprocess::load(image)?;
    let img = engine.prepare_image(&rgb, None)?;
    let p = &img.prepared;
    let mut secs = Vec::with_capacity(a.repetitions);
    for round in 0..=a.repetitions {
        let t = Instant::now();
        let out = v.tower.encode(&p.pixel_values, p.grid_thw, None)?;
        // The values are read back, as the engine reads them.
        let _ = out.embeds.flatten_all()?.to_vec1::<f32>()?;
        if round > 0 {
            secs.push(t.elapsed().as_secs_f64());
        }
    }
    let med = median(&secs);
    let best = secs.iter().copied().fold(f64::INFINITY, f64::min);
    let patches = p.patches();
    let matmul = match std::env::var("SPILLWAY_TOWER_MATMUL") {
        Ok(m) if m.eq_ignore_ascii_case("candle") => "candle",
        _ => "spillway",
    };
    let out = json!({
        "image": image.display().to_string(),
        "grid_thw": p.grid_thw,
        "patches": patches,
        "tokens": p.tokens(v.processor.merge_size),
        "seconds_median": med,
        "seconds_best": best,
        "images_per_sec": 1.0 / med,
        "patches_per_sec": patches as f64 / med,
        "tower_matmul": matmul,
        "tower_device": format!("{:?}", v.tower.device()),
        "threads": crate::kernels::pool::threads(),
        "isa": crate::kernels::isa::active().name(),
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "tower ({matmul}): {patches} patches in {med:.2} s (best {best:.2}) · {:.0} patches/s",
            patches as f64 / med
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Asks the kernel to forget the file's cached pages.
fn drop_page_cache(path: &Path) {
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
    /// Layers and experts read from disk.
    disk_bytes: u64,
    /// Experts of disk-tier layers: found in their cache or read ahead,
    /// read on demand.
    experts: ExpertCounts,
}

impl Timed {
    fn json(&self) -> Value {
        let x = &self.experts;
        json!({"tokens_per_sec": self.tokens_per_sec,
            "disk_wait_secs": self.disk_wait_secs, "disk_bytes": self.disk_bytes,
            "expert_hits": x.hits, "expert_misses": x.misses,
            "experts_read_ahead": x.read_ahead, "experts_read_ahead_used": x.read_ahead_used})
    }
}

/// The disk tier's bound for one decode run.
struct Bound {
    token_secs: f64,
    compute_secs: f64,
    disk_bytes_per_token: f64,
    bandwidth: f64,
}

impl Bound {
    fn limit_secs(&self) -> f64 {
        self.compute_secs
            .max(self.disk_bytes_per_token / self.bandwidth)
    }

    fn ratio(&self) -> f64 {
        self.token_secs / self.limit_secs()
    }

    fn json(&self) -> Value {
        json!({"token_secs": self.token_secs, "compute_secs": self.compute_secs,
            "disk_bytes_per_token": self.disk_bytes_per_token,
            "disk_bandwidth_bytes_per_sec": self.bandwidth,
            "bound_secs": self.limit_secs(), "ratio": self.ratio()})
    }
}

struct Bench<'a> {
    engine: Engine,
    args: &'a BenchArgs,
    path: PathBuf,
    vocab: usize,
    never: AtomicBool,
}

impl Bench<'_> {
    /// Empties the context, then fills `--depth` tokens (untimed).
    fn reset_to_depth(&mut self) -> anyhow::Result<()> {
        self.engine.reset();
        if self.args.depth > 0 {
            let filler = synthetic_tokens(self.args.depth + 7, self.vocab);
            self.engine.feed(&filler[7..], &self.never)?;
        }
        Ok(())
    }

    fn prompt(&mut self) -> anyhow::Result<Timed> {
        self.reset_to_depth()?;
        if self.args.cold {
            drop_page_cache(&self.path);
        }
        let tokens = synthetic_tokens(self.args.prompt_tokens, self.vocab);
        let never = &self.never;
        let mut run = |e: &mut Engine| -> anyhow::Result<()> {
            e.feed(&tokens, never)?;
            Ok(())
        };
        let (n, engine) = (self.args.prompt_tokens, &mut self.engine);
        timed_on(engine, n, &mut run)
    }

    fn decode(&mut self, cold: bool) -> anyhow::Result<Timed> {
        self.reset_to_depth()?;
        if cold {
            drop_page_cache(&self.path);
        }
        let first = synthetic_tokens(1, self.vocab);
        let (n, path, never) = (self.args.gen_tokens, self.path.clone(), &self.never);
        // Random weights' greedy choice repeats one token, which would
        // route every step to the same experts; a synthetic model is fed
        // varied tokens instead, as text is.
        let varied = self
            .engine
            .is_synthetic()
            .then(|| synthetic_tokens(n + 1, self.vocab));
        let mut run = |e: &mut Engine| -> anyhow::Result<()> {
            let mut logits = e.feed(&first, never)?.unwrap_or_default();
            for step in 1..n {
                let t = match &varied {
                    Some(v) => v[step],
                    None => argmax(&logits),
                };
                if cold {
                    drop_page_cache(&path);
                }
                logits = e.feed(&[t], never)?.unwrap_or_default();
            }
            Ok(())
        };
        timed_on(&mut self.engine, n, &mut run)
    }

    /// Compute time per token (disk layers moved to RAM for the run), the
    /// disk's bandwidth, then the cold disk-tier decode itself.
    fn bounded_decode(&mut self) -> anyhow::Result<(Timed, Bound)> {
        let disk: Vec<usize> = (0..self.engine.store().n_layers())
            .filter(|&i| self.engine.store().tier(i) == Tier::Disk)
            .collect();
        for &i in &disk {
            self.engine.set_tier(i, Tier::Ram)?;
        }
        let compute = self.decode(false);
        for &i in &disk {
            self.engine.set_tier(i, Tier::Disk)?;
        }
        let compute_secs = 1.0 / compute?.tokens_per_sec;
        drop_page_cache(&self.path);
        let (bytes, secs) = self.engine.store().measure_disk_bandwidth()?;
        if bytes == 0 {
            anyhow::bail!("--disk-bound: the disk layers cannot be read with direct I/O here, so the disk cannot be measured");
        }
        let run = self.decode(true)?;
        let bound = Bound {
            token_secs: 1.0 / run.tokens_per_sec,
            compute_secs,
            disk_bytes_per_token: run.disk_bytes as f64 / self.args.gen_tokens as f64,
            bandwidth: bytes as f64 / secs,
        };
        Ok((run, bound))
    }
}

fn timed_on(
    engine: &mut Engine,
    n: usize,
    f: &mut dyn FnMut(&mut Engine) -> anyhow::Result<()>,
) -> anyhow::Result<Timed> {
    let stats = &engine.store().stats;
    let (w0, b0) = (
        stats.wait_nanos.load(Ordering::Relaxed),
        stats.bytes_read.load(Ordering::Relaxed),
    );
    let x0 = engine.store().expert_stats().snapshot();
    let t = Instant::now();
    f(engine)?;
    let secs = t.elapsed().as_secs_f64();
    let stats = &engine.store().stats;
    let x = engine.store().expert_stats().snapshot().since(x0);
    Ok(Timed {
        tokens_per_sec: n as f64 / secs,
        disk_wait_secs: (stats.wait_nanos.load(Ordering::Relaxed) - w0 + x.wait_nanos) as f64 / 1e9,
        disk_bytes: stats.bytes_read.load(Ordering::Relaxed) - b0 + x.bytes_read,
        experts: x,
    })
}

/// The llama-bench a run compares against.
struct Peer<'a> {
    exe: &'a Path,
    /// ik_llama.cpp's llama-bench: `-fa 0|1`, no `-d`.
    ik: bool,
    extra: Vec<String>,
}

impl<'a> Peer<'a> {
    fn new(exe: &'a Path, extra: Option<&str>) -> anyhow::Result<Peer<'a>> {
        let help = std::process::Command::new(exe)
            .arg("--help")
            .stderr(std::process::Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", exe.display()))?;
        let ik = String::from_utf8_lossy(&help.stdout).contains("--run-time-repack");
        let extra = extra
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        Ok(Peer { exe, ik, extra })
    }

    fn name(&self) -> &'static str {
        if self.ik {
            "ik_llama.cpp"
        } else {
            "llama.cpp"
        }
    }
}

/// One llama-bench run: (pp, tg) tokens/s, `None` for a skipped test.
fn llama_bench(
    peer: &Peer<'_>,
    model: &Path,
    threads: usize,
    pp: usize,
    tg: usize,
    depth: usize,
    kv: crate::kernels::kv::KvTypes,
) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let exe = peer.exe;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "-m",
        &model.display().to_string(),
        "-t",
        &threads.to_string(),
    ])
    .args(["-p", &pp.to_string(), "-n", &tg.to_string()]);
    if peer.ik {
        if depth > 0 {
            anyhow::bail!("ik_llama.cpp's llama-bench has no -d (a context depth)");
        }
    } else {
        cmd.args(["-d", &depth.to_string()]);
    }
    let out = cmd
        .args([
            // The same cache types; llama.cpp needs flash attention for a
            // quantized V cache, and uses it for all of them here.
            "-ctk",
            kv.k.name(),
            "-ctv",
            kv.v.name(),
            "-fa",
            if peer.ik { "1" } else { "on" },
            "-r",
            "1",
            "-o",
            "json",
        ])
        .args(&peer.extra)
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        anyhow::bail!("{} failed ({})", exe.display(), out.status);
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("{} printed no JSON: {e}", exe.display()))?;
    let pick = |key: &str| -> Option<f64> {
        v.as_array()?
            .iter()
            .find(|r| r[key].as_u64().is_some_and(|n| n > 0))
            .and_then(|r| r["avg_ts"].as_f64())
    };
    Ok((pick("n_prompt"), pick("n_gen")))
}

pub fn run(a: BenchArgs, config: &Config) -> anyhow::Result<ExitCode> {
    if a.repetitions == 0 {
        anyhow::bail!("--repetitions must be at least 1");
    }
    if a.model.spec.options().drafting != crate::engine::Drafting::Off {
        anyhow::bail!(
            "bench measures plain decoding; speculative decoding is measured by bench/speculative.py (generate with and without a drafter, alternating)"
        );
    }
    let engine = a.model.load(config)?;
    if let Some(image) = &a.image {
        return bench_tower(&engine, image, &a);
    }
    let path = engine.gguf.path.clone();
    let vocab = engine.hparams().n_vocab;
    let ctx = engine.context_length();
    if a.depth + a.prompt_tokens >= ctx || a.depth + a.gen_tokens + 1 >= ctx {
        anyhow::bail!("the test lengths exceed the context ({ctx} tokens); raise --ctx");
    }
    let disk_layers = engine
        .store()
        .tiers()
        .iter()
        .filter(|t| **t == Tier::Disk)
        .count();
    if a.disk_bound && (disk_layers == 0 || a.gen_tokens == 0) {
        anyhow::bail!(
            "--disk-bound needs disk layers (--disk-layers) and a decode test (--gen-tokens)"
        );
    }
    let threads = crate::kernels::pool::threads();
    let isa = crate::kernels::isa::active().name();
    let n_layers = engine.store().n_layers();
    let mut b = Bench {
        engine,
        args: &a,
        path: path.clone(),
        vocab,
        never: AtomicBool::new(false),
    };
    let (mut pp_runs, mut tg_runs, mut bounds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut l_pp, mut l_tg) = (Vec::new(), Vec::new());
    // One untimed prompt and decode step first, as llama-bench warms up
    // (first-touch pages of the KV cache and scratch, clocks); a cold
    // benchmark measures the cold start itself.
    if !a.cold {
        if a.prompt_tokens > 0 {
            b.prompt()?;
        }
        if a.gen_tokens > 0 {
            b.engine.reset();
            b.engine.feed(&synthetic_tokens(1, vocab), &b.never)?;
        }
    }
    let peer = a
        .compare_llama
        .as_deref()
        .map(|exe| Peer::new(exe, a.compare_args.as_deref()))
        .transpose()?;
    for round in 1..=a.repetitions {
        if a.prompt_tokens > 0 {
            pp_runs.push(b.prompt()?);
        }
        if a.gen_tokens > 0 {
            if a.disk_bound {
                let (run, bound) = b.bounded_decode()?;
                tg_runs.push(run);
                bounds.push(bound);
            } else {
                tg_runs.push(b.decode(a.cold)?);
            }
        }
        if let Some(peer) = &peer {
            let (p, t) = llama_bench(
                peer,
                &path,
                threads,
                a.prompt_tokens,
                a.gen_tokens,
                a.depth,
                b.engine.kv_types(),
            )?;
            l_pp.extend(p);
            l_tg.extend(t);
            if !a.json {
                let s = |v: &[Timed]| v.last().map_or(0.0, |r| r.tokens_per_sec);
                eprintln!(
                    "round {round}: spillway pp {:.1} tg {:.1} | {} pp {:.1} tg {:.1}",
                    s(&pp_runs),
                    s(&tg_runs),
                    peer.name(),
                    p.unwrap_or(0.0),
                    t.unwrap_or(0.0)
                );
            }
        }
    }
    b.engine.reset();
    let speeds = |v: &[Timed]| v.iter().map(|r| r.tokens_per_sec).collect::<Vec<_>>();
    let (pp, tg) = (speeds(&pp_runs), speeds(&tg_runs));
    // Ratios per round (each pair ran side by side), then their median.
    let ratio = |s: &[f64], l: &[f64]| -> Option<f64> {
        (!l.is_empty() && l.len() == s.len())
            .then(|| median(&s.iter().zip(l).map(|(a, b)| a / b).collect::<Vec<_>>()))
    };
    let (pp_ratio, tg_ratio) = (ratio(&pp, &l_pp), ratio(&tg, &l_tg));
    // Predicted peak memory per tier against what was measured: the RAM
    // tier's against the resident set's peak, the disk tier's against the
    // offload folder (when layers are copied there).
    let peak = b.engine.placement().peak;
    let measured_ram = telemetry::rss().map(|r| r.peak);
    let offload_bytes = b.engine.store().offload_bytes();
    let bound_ratio =
        (!bounds.is_empty()).then(|| median(&bounds.iter().map(Bound::ratio).collect::<Vec<_>>()));
    // A mixture-of-experts model with experts on disk: how often the cache
    // served a routed expert, and the disk bytes a decoded token read
    // against the routed experts' bytes (what it would read with no cache).
    let experts = {
        let p = b.engine.placement();
        let fp = b.engine.footprint();
        let on_disk: Vec<usize> = (0..p.layers.len())
            .filter(|&i| p.layers[i] == Tier::Disk)
            .collect();
        fp.experts.as_ref().filter(|_| !on_disk.is_empty()).map(|x| {
            let rate = |v: &[Timed], f: fn(&ExpertCounts) -> Option<f64>| {
                let r: Vec<f64> = v.iter().filter_map(|t| f(&t.experts)).collect();
                (!r.is_empty()).then(|| median(&r))
            };
            let per_token: Vec<f64> = tg_runs
                .iter()
                .map(|t| t.disk_bytes as f64 / a.gen_tokens.max(1) as f64)
                .collect();
            json!({
                "decode_hit_rate": rate(&tg_runs, ExpertCounts::hit_rate),
                "prompt_hit_rate": rate(&pp_runs, ExpertCounts::hit_rate),
                "read_ahead": b.engine.store().expert_read_ahead(),
                // Experts read ahead that a token was then routed to.
                "decode_read_ahead_accuracy": rate(&tg_runs, ExpertCounts::read_ahead_accuracy),
                // The compute thread's wait for expert reads, per decoded token.
                "decode_wait_secs_per_token": (!tg_runs.is_empty()).then(|| median(&tg_runs.iter().map(|t| t.disk_wait_secs / a.gen_tokens.max(1) as f64).collect::<Vec<_>>())),
                "disk_bytes_per_token": (!per_token.is_empty()).then(|| median(&per_token)),
                "routed_bytes_per_token": on_disk.iter().map(|&i| x.n_used as u64 * fp.expert_bytes(i)).sum::<u64>(),
                "cache_experts": on_disk.iter().map(|&i| p.experts.get(i).map_or(0, |s| s.ram)).sum::<usize>(),
                "disk_experts": on_disk.iter().map(|&i| p.experts.get(i).map_or(0, |s| s.disk)).sum::<usize>(),
                "busiest_tenth_share": b.engine.busiest_tenth_share(),
            })
        })
    };
    if a.json {
        let runs = |v: &[Timed]| v.iter().map(Timed::json).collect::<Vec<_>>();
        let mut out = json!({
            "model": path.display().to_string(),
            "threads": threads,
            "isa": isa,
            "disk_layers": disk_layers,
            "cold": a.cold,
            "prompt_tokens": a.prompt_tokens,
            "depth": a.depth,
            "kv_types": b.engine.kv_types(),
            "gen_tokens": a.gen_tokens,
            "pp_tokens_per_sec": median(&pp),
            "tg_tokens_per_sec": median(&tg),
            "pp_runs": runs(&pp_runs),
            "tg_runs": runs(&tg_runs),
            "peak_rss_bytes": measured_ram,
            "predicted_peak_ram_bytes": peak.ram,
            "predicted_peak_disk_bytes": peak.disk,
            "predicted_peak_gpu_bytes": peak.gpu,
            "offload_folder_bytes": offload_bytes,
            "layers": {
                "gpu": b.engine.placement().count(Tier::Gpu),
                "ram": b.engine.placement().count(Tier::Ram),
                "disk": disk_layers,
            },
            "mode": b.engine.placement().mode.to_string(),
            "predicted_prompt_tokens_per_sec": b.engine.placement().predicted_prompt_tokens_per_sec,
            "predicted_decode_tokens_per_sec": b.engine.placement().predicted_decode_tokens_per_sec,
            // Bytes a decode step reads: every layer, the head, the final norm.
            "weights_bytes_per_token": (b.engine.placement().weights.gpu
                + b.engine.placement().weights.ram
                + b.engine.placement().weights.disk)
                .saturating_sub(b.engine.footprint().embeddings_bytes),
            "gpu": b.engine.budgets().gpu_name,
            "synthetic": b.engine.is_synthetic(),
        });
        if let Some(x) = &experts {
            out["experts"] = x.clone();
        }
        if a.disk_bound {
            out["disk_bound"] = json!({
                "ratio": bound_ratio,
                "runs": bounds.iter().map(Bound::json).collect::<Vec<_>>(),
            });
        }
        if let Some(peer) = &peer {
            out["llama_cpp"] = json!({
                "engine": peer.name(), "extra_args": peer.extra,
                "pp_tokens_per_sec": median(&l_pp), "tg_tokens_per_sec": median(&l_tg),
                "pp_runs": l_pp, "tg_runs": l_tg,
                "pp_ratio": pp_ratio, "tg_ratio": tg_ratio,
            });
        }
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} | threads {threads} ({isa}) | disk layers {disk_layers}/{n_layers}{}",
        path.display(),
        if a.cold { " (cold cache)" } else { "" }
    );
    let peer_name = peer.as_ref().map_or("llama.cpp", |p| p.name());
    let line = |name: String, s: &[f64], l: &[f64], r: Option<f64>| {
        let peer = r.map_or(String::new(), |r| {
            format!("   {peer_name} {:8.2} t/s   ratio {r:.3}x", median(l))
        });
        println!("{name:<8} {:8.2} t/s{peer}", median(s));
    };
    if a.prompt_tokens > 0 {
        line(format!("pp{}", a.prompt_tokens), &pp, &l_pp, pp_ratio);
    }
    if a.gen_tokens > 0 {
        line(format!("tg{}", a.gen_tokens), &tg, &l_tg, tg_ratio);
    }
    if let Some(m) = measured_ram {
        println!(
            "memory: RAM peak {:.1} MiB measured, {:.1} MiB predicted ({:+.1}%); disk tier {:.1} MiB predicted{}",
            m as f64 / 1048576.0,
            peak.ram as f64 / 1048576.0,
            (peak.ram as f64 / m as f64 - 1.0) * 100.0,
            peak.disk as f64 / 1048576.0,
            if offload_bytes > 0 {
                format!(", {:.1} MiB in the offload folder", offload_bytes as f64 / 1048576.0)
            } else {
                String::new()
            }
        );
    }
    if let Some(x) = &experts {
        println!(
            "experts: decode hit rate {:.1}% ({:.1}% prompt), read ahead {}, {:.1}% of them used, {:.1} ms wait per token; {:.1} MB read from disk per token; routed experts of disk layers {:.1} MB per token; cache {} experts; busiest tenth took {:.1}% of routes",
            x["decode_hit_rate"].as_f64().unwrap_or(0.0) * 100.0,
            x["prompt_hit_rate"].as_f64().unwrap_or(0.0) * 100.0,
            if x["read_ahead"].as_bool() == Some(true) { "on" } else { "off" },
            x["decode_read_ahead_accuracy"].as_f64().unwrap_or(0.0) * 100.0,
            x["decode_wait_secs_per_token"].as_f64().unwrap_or(0.0) * 1e3,
            x["disk_bytes_per_token"].as_f64().unwrap_or(0.0) / 1e6,
            x["routed_bytes_per_token"].as_f64().unwrap_or(0.0) / 1e6,
            x["cache_experts"],
            x["busiest_tenth_share"].as_f64().unwrap_or(0.0) * 100.0,
        );
    }
    if let (Some(r), Some(last)) = (bound_ratio, bounds.last()) {
        println!(
            "disk bound: token {:.1} ms, compute {:.1} ms, {:.1} MB / {:.0} MB/s = {:.1} ms; token / bound = {r:.3} (median)",
            last.token_secs * 1e3,
            last.compute_secs * 1e3,
            last.disk_bytes_per_token / 1e6,
            last.bandwidth / 1e6,
            last.disk_bytes_per_token / last.bandwidth * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}
