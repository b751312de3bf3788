//! The planner: `plan(footprint, budgets, mode, rates)` is a pure function
//! that puts every layer in VRAM, RAM or on disk, or says why it cannot.
//!
//! Every block is read once per token, so what matters is how many bytes sit
//! in each tier: the GPU takes as many layers as fit, RAM the next, disk the
//! rest. Tier ranges are contiguous — disk layers first, then RAM, then GPU
//! layers next to the output head — so the hidden state crosses to the GPU
//! once per pass and the logits come back once. The token embedding stays in
//! RAM (only a prompt's rows are read); the head goes where the last layers
//! are when it fits. KV cache follows the layer that computes it: GPU
//! layers' in VRAM, the others' in RAM (disk layers too).

use std::fmt;
use std::str::FromStr;

use super::budget::Budgets;
use super::footprint::Footprint;
use super::store::Tier;

/// How the user wants the model placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// GPU first, then RAM, then disk: the fastest placement that fits.
    #[default]
    Auto,
    /// Everything in VRAM, or an error naming the shortfall.
    FullGpu,
    /// As many layers in VRAM as fit, the rest in RAM; never disk.
    CpuOffload,
    /// As many layers in VRAM as fit, the rest on disk (RAM keeps only the
    /// KV cache, embeddings and read buffers).
    DiskOffload,
    /// No GPU: RAM, then disk when RAM runs out.
    CpuOnly,
    /// This many layers in VRAM (the last ones), the rest RAM then disk.
    GpuLayers(usize),
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Auto => f.write_str("auto"),
            Mode::FullGpu => f.write_str("full-gpu"),
            Mode::CpuOffload => f.write_str("cpu-offload"),
            Mode::DiskOffload => f.write_str("disk-offload"),
            Mode::CpuOnly => f.write_str("cpu-only"),
            Mode::GpuLayers(n) => write!(f, "{n} GPU layers"),
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "auto" => Mode::Auto,
            "full-gpu" | "gpu" | "cuda" => Mode::FullGpu,
            "cpu-offload" | "balanced" => Mode::CpuOffload,
            "disk-offload" | "disk" => Mode::DiskOffload,
            "cpu-only" | "cpu" => Mode::CpuOnly,
            n => n.parse().map(Mode::GpuLayers).map_err(|_| {
                format!("unknown mode '{s}' (auto, full-gpu, cpu-offload, disk-offload, cpu-only, or a GPU layer count)")
            })?,
        })
    }
}

/// Throughput of each tier, from the calibration (see `calibrate`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rates {
    /// Weight bytes per second the GPU's matmuls stream in decode.
    pub gpu_bytes_per_sec: f64,
    /// Multiply-adds ×2 per second of the GPU's prompt matmuls.
    pub gpu_flops: f64,
    /// Weight bytes per second the CPU's decode kernels stream.
    pub ram_bytes_per_sec: f64,
    /// Multiply-adds ×2 per second of the CPU's prompt GEMM.
    pub cpu_flops: f64,
    /// Sequential read bandwidth under the offload folder.
    pub disk_bytes_per_sec: f64,
}

/// Bytes per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TierBytes {
    pub gpu: u64,
    pub ram: u64,
    pub disk: u64,
}

impl TierBytes {
    /// Bytes over every tier.
    pub fn total(&self) -> u64 {
        self.gpu + self.ram + self.disk
    }

    pub fn get(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Gpu => self.gpu,
            Tier::Ram => self.ram,
            Tier::Disk => self.disk,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub mode: Mode,
    /// The tier of each block.
    pub layers: Vec<Tier>,
    /// The output head's tier (GPU or RAM).
    pub head: Tier,
    /// The vision tower's tier, when there is one.
    pub vision: Option<Tier>,
    /// Weight bytes per tier (embeddings and head included).
    pub weights: TierBytes,
    /// KV cache bytes per tier.
    pub kv: TierBytes,
    /// The tier of each layer's KV cache: the GPU for a GPU layer keeping
    /// it there, RAM for the others (a GPU layer whose cache is in RAM
    /// runs its attention on the CPU).
    pub kv_tiers: Vec<Tier>,
    /// Predicted peak bytes per tier: weights, KV cache, scratch, read
    /// buffers, runtime.
    pub peak: TierBytes,
    pub predicted_prompt_tokens_per_sec: f64,
    pub predicted_decode_tokens_per_sec: f64,
    /// A mixture-of-experts model's experts per layer: how many RAM holds
    /// and how many stay on disk (read only when a token is routed to them,
    /// into a cache of the RAM count). Empty for dense models.
    pub experts: Vec<ExpertSplit>,
}

/// Where one layer's experts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ExpertSplit {
    pub ram: usize,
    pub disk: usize,
}

impl Placement {
    pub fn count(&self, tier: Tier) -> usize {
        self.layers.iter().filter(|&&t| t == tier).count()
    }

    /// One tier as `plan --json` and the API's status show it: layers and
    /// the weight, KV cache and peak bytes it holds.
    pub fn tier_json(&self, tier: Tier) -> serde_json::Value {
        serde_json::json!({
            "layers": self.count(tier),
            "weights_bytes": self.weights.get(tier),
            "kv_cache_bytes": self.kv.get(tier),
            "peak_bytes": self.peak.get(tier),
        })
    }

    /// Every tier, keyed `gpu`, `ram`, `disk`.
    pub fn tiers_json(&self) -> serde_json::Value {
        serde_json::json!({
            "gpu": self.tier_json(Tier::Gpu),
            "ram": self.tier_json(Tier::Ram),
            "disk": self.tier_json(Tier::Disk),
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("{mode} needs {} of {tier} but {} is free ({} MiB short); {suggestion}", human(*needed), human(*free), needed.saturating_sub(*free).div_ceil(1 << 20))]
    DoesNotFit {
        mode: Mode,
        tier: &'static str,
        needed: u64,
        free: u64,
        suggestion: String,
    },
}

impl PlacementError {
    /// MiB missing in the tier that failed.
    pub fn shortfall_mib(&self) -> u64 {
        let PlacementError::DoesNotFit { needed, free, .. } = self;
        needed.saturating_sub(*free).div_ceil(1 << 20)
    }
}

/// `bytes` as "4.07 GiB" / "612 MiB".
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{bytes} B")
    }
}

/// Parses "6GiB", "6G", "6 GB", "512MiB", "1.5GiB" or plain bytes. Decimal
/// units (GB) are powers of ten, binary ones (GiB, G) powers of two.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 6GiB, 512MiB)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => (1u64 << 20) as f64,
        "mb" => 1e6,
        "g" | "gib" => (1u64 << 30) as f64,
        "gb" => 1e9,
        "t" | "tib" => (1u64 << 40) as f64,
        "tb" => 1e12,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (B, MiB, GiB, MB, GB)"
            ))
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(bytes as u64)
}

/// A layout: the first `disk` layers on disk, the last `gpu` in VRAM; of
/// the GPU layers the first `kv_ram` keep their KV cache in RAM (their
/// attention runs on the CPU, as llama.cpp's `--no-kv-offload`).
#[derive(Debug, Clone, Copy)]
struct Layout {
    gpu: usize,
    disk: usize,
    kv_ram: usize,
    head_gpu: bool,
    vision_gpu: bool,
}

impl Layout {
    fn tier(&self, i: usize, n: usize) -> Tier {
        if i >= n - self.gpu {
            Tier::Gpu
        } else if i < self.disk {
            Tier::Disk
        } else {
            Tier::Ram
        }
    }

    /// The tier of layer `i`'s KV cache: the GPU for a GPU layer keeping
    /// it there, RAM otherwise.
    fn kv_tier(&self, i: usize, n: usize) -> Tier {
        if i >= n - self.gpu + self.kv_ram.min(self.gpu) {
            Tier::Gpu
        } else {
            Tier::Ram
        }
    }
}

/// Bytes per tier of a layout: (weights, kv, peak). A mixture-of-experts
/// layer on disk keeps its dense part in RAM (it runs for every token);
/// its experts are on disk (the cache RAM gives them is added by
/// [`placement`]).
fn usage(fp: &Footprint, l: Layout) -> (TierBytes, TierBytes, TierBytes) {
    let n = fp.n_layer();
    let mut w = TierBytes::default();
    let mut kv = TierBytes::default();
    for (i, &b) in fp.layer_bytes.iter().enumerate() {
        match l.tier(i, n) {
            Tier::Gpu => {
                w.gpu += b;
                match l.kv_tier(i, n) {
                    Tier::Gpu => kv.gpu += fp.kv_gpu_bytes(i),
                    _ => kv.ram += fp.kv_bytes(i),
                }
            }
            t => {
                if t == Tier::Disk && fp.experts.is_some() {
                    w.ram += fp.dense_bytes(i);
                    w.disk += b - fp.dense_bytes(i);
                } else if t == Tier::Disk {
                    w.disk += b;
                } else {
                    w.ram += b;
                }
                kv.ram += fp.kv_bytes(i);
            }
        }
    }
    w.ram += fp.embeddings_bytes;
    if l.head_gpu {
        w.gpu += fp.head_bytes;
    } else if !fp.head_tied {
        w.ram += fp.head_bytes;
    }
    if l.vision_gpu {
        w.gpu += fp.vision_bytes;
    } else {
        w.ram += fp.vision_bytes;
    }
    let uses_gpu = w.gpu > 0;
    let peak = TierBytes {
        gpu: if uses_gpu {
            w.gpu + kv.gpu + fp.gpu_scratch_bytes + fp.gpu_runtime_bytes
        } else {
            0
        },
        ram: w.ram
            + kv.ram
            + fp.cpu_scratch_bytes
            + fp.cpu_runtime_bytes
            + fp.disk_staging_bytes(0..l.disk),
        disk: w.disk,
    };
    (w, kv, peak)
}

/// Predicted (prompt, decode) tokens per second: each tier's bytes over its
/// bandwidth in decode, its multiply-adds over its throughput in prompts;
/// disk reads overlap compute (the prefetch thread), so a pass takes the
/// longer of the two.
/// A mixture-of-experts layer runs its dense part and its routed experts;
/// on disk, a routed expert is read when the cache (`experts[i].ram` of
/// them) misses — `1 - ram/n` of the time if routing were uniform — and a
/// prompt chunk touches nearly every expert.
fn predict(fp: &Footprint, l: Layout, rates: &Rates, experts: &[ExpertSplit]) -> (f64, f64) {
    let n = fp.n_layer();
    let (mut gpu_b, mut cpu_b, mut disk_b, mut gpu_e, mut cpu_e) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let mut disk_prompt_b = 0f64;
    // A GPU layer whose KV cache is in RAM sends its queries, keys and
    // values to the host and the attention back every pass, and its
    // attention reads the cache from RAM: at a conversation's mean fill
    // (half the context) in decode, and its multiply-adds on the CPU in a
    // prompt. (Caches on the GPU are read at its bandwidth: left out.)
    let mut host_kv_crossings = 0.0;
    let mean_fill = fp.context as f64 / 2.0;
    let attention_macs = 2.0 * mean_fill * (fp.hp.n_head * fp.hp.head_dim) as f64;
    for i in 0..n {
        let (b, e) = fp.active(i);
        let (b, e) = (b as f64, e as f64);
        match l.tier(i, n) {
            Tier::Gpu => {
                gpu_b += b;
                gpu_e += e;
                if l.kv_tier(i, n) == Tier::Ram {
                    cpu_b += fp.kv_bytes(i) as f64 / 2.0;
                    cpu_e += attention_macs;
                    host_kv_crossings += 4e-5;
                }
            }
            t => {
                cpu_b += b;
                cpu_e += e;
                match (t, &fp.experts, experts.get(i)) {
                    (Tier::Disk, Some(x), Some(split)) => {
                        let miss = split.disk as f64 / x.n_expert.max(1) as f64;
                        let one = fp.expert_bytes(i) as f64;
                        disk_b += x.n_used as f64 * one * miss;
                        disk_prompt_b += split.disk as f64 * one;
                    }
                    (Tier::Disk, _, _) => {
                        disk_b += b;
                        disk_prompt_b += b;
                    }
                    _ => {}
                }
            }
        }
    }
    let head = fp.head_bytes as f64;
    if l.head_gpu {
        gpu_b += head;
    } else {
        cpu_b += head;
    }
    // The hidden state crosses at each tier boundary: a few microseconds.
    let crossings = if l.gpu > 0 && l.gpu < n { 2e-5 } else { 0.0 } + host_kv_crossings;
    let decode = (gpu_b / rates.gpu_bytes_per_sec + cpu_b / rates.ram_bytes_per_sec + crossings)
        .max(disk_b / rates.disk_bytes_per_sec);
    let chunk = fp.prompt_chunk.max(1) as f64;
    let head_flops = 2.0 * fp.head_elems as f64;
    let head_secs = if l.head_gpu {
        head_flops / rates.gpu_flops
    } else {
        head_flops / rates.cpu_flops
    };
    let prompt =
        (2.0 * chunk * (gpu_e / rates.gpu_flops + cpu_e / rates.cpu_flops) + head_secs + crossings)
            .max(disk_prompt_b / rates.disk_bytes_per_sec);
    (chunk / prompt.max(1e-12), 1.0 / decode.max(1e-12))
}

/// Each layer's experts in RAM and on disk: all in RAM for RAM and GPU
/// layers; for disk layers, the RAM left under `ram` after everything else
/// becomes expert cache, shared evenly between them.
fn expert_split(
    fp: &Footprint,
    l: Layout,
    ram_used: u64,
    ram: u64,
    cap: Option<usize>,
) -> Vec<ExpertSplit> {
    let Some(x) = &fp.experts else {
        return Vec::new();
    };
    let n = fp.n_layer();
    let disk: Vec<usize> = (0..n).filter(|&i| l.tier(i, n) == Tier::Disk).collect();
    let spare = ram.saturating_sub(ram_used);
    let per_layer = spare / disk.len().max(1) as u64;
    (0..n)
        .map(|i| {
            if l.tier(i, n) != Tier::Disk {
                return ExpertSplit {
                    ram: x.n_expert,
                    disk: 0,
                };
            }
            let fit = match cap {
                Some(c) => c.min(x.n_expert),
                None => (per_layer / fp.expert_bytes(i).max(1)).min(x.n_expert as u64) as usize,
            };
            ExpertSplit {
                ram: fit,
                disk: x.n_expert - fit,
            }
        })
        .collect()
}

fn placement(
    fp: &Footprint,
    l: Layout,
    mode: Mode,
    rates: &Rates,
    ram: u64,
    expert_cap: Option<usize>,
) -> Placement {
    let n = fp.n_layer();
    let (mut weights, kv, mut peak) = usage(fp, l);
    let experts = expert_split(fp, l, peak.ram, ram, expert_cap);
    // The expert cache is RAM the placement uses.
    let cached: u64 = (0..n)
        .filter(|&i| l.tier(i, n) == Tier::Disk)
        .map(|i| experts.get(i).map_or(0, |s| s.ram as u64) * fp.expert_bytes(i))
        .sum();
    weights.ram += cached;
    weights.disk = weights.disk.saturating_sub(cached);
    peak.ram += cached;
    let (prompt, decode) = predict(fp, l, rates, &experts);
    Placement {
        experts,
        mode,
        layers: (0..n).map(|i| l.tier(i, n)).collect(),
        kv_tiers: (0..n).map(|i| l.kv_tier(i, n)).collect(),
        head: if l.head_gpu { Tier::Gpu } else { Tier::Ram },
        vision: (fp.vision_bytes > 0).then_some(if l.vision_gpu { Tier::Gpu } else { Tier::Ram }),
        weights,
        kv,
        peak,
        predicted_prompt_tokens_per_sec: prompt,
        predicted_decode_tokens_per_sec: decode,
    }
}

/// The most GPU layers (with the head and vision tower when they fit too)
/// that `vram` holds, at most `limit`. With `host_kv`, GPU layers may keep
/// their KV cache in RAM: the most layers that fit so, with as few caches
/// in RAM as they allow.
fn fill_gpu(fp: &Footprint, vram: u64, limit: usize, host_kv: bool) -> Layout {
    let base = Layout {
        gpu: 0,
        disk: 0,
        kv_ram: 0,
        head_gpu: false,
        vision_gpu: false,
    };
    let fits = |l: Layout| usage(fp, l).2.gpu <= vram;
    let most = |g: usize| Layout {
        gpu: g,
        kv_ram: if host_kv { g } else { 0 },
        ..base
    };
    let Some(gpu) = (0..=limit).rev().find(|&g| fits(most(g))) else {
        return base;
    };
    let kv_ram = (0..=most(gpu).kv_ram)
        .find(|&h| {
            fits(Layout {
                kv_ram: h,
                ..most(gpu)
            })
        })
        .unwrap_or(0);
    let mut l = Layout {
        kv_ram,
        ..most(gpu)
    };
    // The head is read every token, like a layer; it joins the last layers
    // on the GPU when it fits.
    if fits(Layout {
        head_gpu: true,
        ..l
    }) {
        l.head_gpu = true;
    }
    if fp.vision_bytes > 0
        && fits(Layout {
            vision_gpu: true,
            ..l
        })
    {
        l.vision_gpu = true;
    }
    l
}

/// The fewest disk layers that let RAM hold the rest, or `None`. A
/// mixture-of-experts model that does not fit whole keeps every layer's
/// dense part in RAM (it runs for every token) and splits the RAM left
/// between the layers' expert caches: all its layers off the GPU go to
/// the disk tier together.
fn fill_ram(fp: &Footprint, ram: u64, l: Layout) -> Option<Layout> {
    let n = fp.n_layer();
    if fp.experts.is_some() {
        return [0, n - l.gpu]
            .into_iter()
            .map(|disk| Layout { disk, ..l })
            .find(|&c| usage(fp, c).2.ram <= ram);
    }
    (0..=n - l.gpu)
        .map(|disk| Layout { disk, ..l })
        .find(|&c| usage(fp, c).2.ram <= ram)
}

/// The first layout that fits, trying each GPU layer count of `gpu_counts`
/// in turn, the head on the GPU before RAM, the fewest disk layers.
fn search(
    fp: &Footprint,
    vram: u64,
    ram: u64,
    gpu_counts: impl Iterator<Item = usize>,
    host_kv: bool,
) -> Option<Layout> {
    for gpu in gpu_counts {
        let l = fill_gpu(fp, vram, gpu, host_kv);
        if l.gpu != gpu {
            continue;
        }
        let heads = [
            l,
            Layout {
                head_gpu: false,
                vision_gpu: false,
                ..l
            },
        ];
        for h in heads.into_iter().filter(|h| usage(fp, *h).2.gpu <= vram) {
            if let Some(found) = fill_ram(fp, ram, h) {
                return Some(found);
            }
        }
    }
    None
}

/// Places `fp` within `budgets` as `mode` asks.
pub fn plan(
    fp: &Footprint,
    budgets: &Budgets,
    mode: Mode,
    rates: &Rates,
) -> Result<Placement, PlacementError> {
    let n = fp.n_layer();
    let (vram, ram) = (budgets.vram_bytes, budgets.ram_bytes);
    let ram_error = |l: Layout, mode: Mode, suggestion: String| {
        let needed = usage(fp, l).2.ram;
        PlacementError::DoesNotFit {
            mode,
            tier: "RAM",
            needed,
            free: ram,
            suggestion,
        }
    };
    // Of two layouts that fit, the one predicted to decode faster; the
    // first (every GPU layer's cache on the GPU) on a tie.
    let faster = |a: Layout, b: Option<Layout>| -> Layout {
        let speed = |l: Layout| {
            predict(
                fp,
                l,
                rates,
                &expert_split(fp, l, usage(fp, l).2.ram, ram, None),
            )
            .1
        };
        match b {
            Some(b) if b.gpu > a.gpu && speed(b) > speed(a) => b,
            _ => a,
        }
    };
    let layout = match mode {
        Mode::Auto | Mode::CpuOnly => {
            let vram = if mode == Mode::Auto { vram } else { 0 };
            // Fastest first: the most GPU layers, the head on the GPU when it
            // fits there, the fewest disk layers. Fewer GPU layers only help
            // when RAM cannot hold what the GPU left (never, in practice),
            // but trying them makes "auto fails" mean "nothing fits". GPU
            // layers keeping their caches in RAM (more of them fit) are
            // taken when that is predicted faster.
            let pick = |host_kv: bool| {
                let most = fill_gpu(fp, vram, n, host_kv).gpu;
                search(fp, vram, ram, (0..=most).rev(), host_kv)
            };
            match pick(false) {
                Some(a) => faster(a, (vram > 0).then(|| pick(true)).flatten()),
                None => pick(true).ok_or_else(|| {
                    let most = fill_gpu(fp, vram, n, false).gpu;
                    let all_disk = Layout {
                        disk: n - most,
                        ..fill_gpu(fp, vram, most, false)
                    };
                    ram_error(
                        all_disk,
                        mode,
                        "even with every layer on disk, the KV cache, embeddings and read buffers do not fit: lower the context length (--ctx) or raise the RAM cap".into(),
                    )
                })?,
            }
        }
        Mode::FullGpu | Mode::GpuLayers(_) => {
            let want = match mode {
                Mode::GpuLayers(g) => g.min(n),
                _ => n,
            };
            let full = Layout {
                gpu: want,
                disk: 0,
                kv_ram: 0,
                head_gpu: want == n,
                vision_gpu: want == n && fp.vision_bytes > 0,
            };
            let needed = usage(fp, full).2.gpu;
            // The layers asked for, their caches in RAM when VRAM cannot
            // hold them too.
            let host_kv = needed > vram;
            let lean = usage(
                fp,
                Layout {
                    kv_ram: want,
                    ..full
                },
            )
            .2
            .gpu;
            if lean > vram {
                let fits = fill_gpu(fp, vram, n, true).gpu;
                let suggestion = if fits == n {
                    format!("every layer fits with its KV cache in RAM, but not the output head too: choose --gpu-layers {n} or auto")
                } else if fits > 0 {
                    format!("{fits} of {n} layers fit: choose cpu-offload, auto, or --gpu-layers {fits}")
                } else {
                    "not even one layer fits: choose cpu-only or auto".to_string()
                };
                return Err(PlacementError::DoesNotFit {
                    mode,
                    tier: "VRAM",
                    // The least it needs: every cache in RAM.
                    needed: lean,
                    free: vram,
                    suggestion,
                });
            }
            let mut l = fill_gpu(fp, vram, want, host_kv);
            l.gpu = want;
            if mode == Mode::FullGpu {
                // The head and vision tower go to the GPU too: more caches
                // in RAM when they need the room.
                let with_all = |h: usize| Layout {
                    kv_ram: h,
                    head_gpu: true,
                    vision_gpu: fp.vision_bytes > 0,
                    ..l
                };
                if let Some(h) = (l.kv_ram..=want).find(|&h| usage(fp, with_all(h)).2.gpu <= vram) {
                    l = with_all(h);
                }
            }
            if mode == Mode::FullGpu {
                l
            } else {
                search(fp, vram, ram, std::iter::once(want), host_kv).ok_or_else(|| {
                    ram_error(
                        Layout {
                            disk: n - want,
                            ..l
                        },
                        mode,
                        "lower the context length or place more layers on the GPU".into(),
                    )
                })?
            }
        }
        Mode::CpuOffload => {
            let fits_ram = |l: Layout| usage(fp, l).2.ram <= ram;
            let l = fill_gpu(fp, vram, n, false);
            let lean = Some(fill_gpu(fp, vram, n, true)).filter(|&b| fits_ram(b));
            if !fits_ram(l) {
                if let Some(b) = lean {
                    b
                } else {
                    let suggestion = match fill_ram(fp, ram, l) {
                        Some(d) => {
                            format!("disk-offload or auto fit (with {} layers on disk)", d.disk)
                        }
                        None => "lower the context length (--ctx)".to_string(),
                    };
                    return Err(ram_error(l, mode, suggestion));
                }
            } else {
                faster(l, lean)
            }
        }
        Mode::DiskOffload => {
            let mut l = fill_gpu(fp, vram, n, false);
            l.disk = n - l.gpu;
            if usage(fp, l).2.ram > ram {
                return Err(ram_error(
                    l,
                    mode,
                    "lower the context length (--ctx) or raise the RAM cap".into(),
                ));
            }
            l
        }
    };
    let (_, _, peak) = usage(fp, layout);
    if peak.disk > 0 && fp.disk_copy && peak.disk > budgets.disk_bytes {
        return Err(PlacementError::DoesNotFit {
            mode,
            tier: "disk",
            needed: peak.disk,
            free: budgets.disk_bytes,
            suggestion: "free disk space under the offload folder or choose another one".into(),
        });
    }
    Ok(placement(fp, layout, mode, rates, ram, None))
}

/// A placement given layer by layer (a manual override such as
/// `--disk-layers`), with its totals and predictions computed as the
/// planner's own.
#[allow(clippy::too_many_arguments)]
pub fn describe(
    fp: &Footprint,
    layers: &[Tier],
    kv_in_ram: usize,
    head: Tier,
    mode: Mode,
    rates: &Rates,
    ram: u64,
    expert_cap: Option<usize>,
) -> Placement {
    let n = fp.n_layer();
    let gpu = layers.iter().filter(|&&t| t == Tier::Gpu).count();
    let disk = layers.iter().filter(|&&t| t == Tier::Disk).count();
    let l = Layout {
        gpu: gpu.min(n),
        disk: disk.min(n - gpu.min(n)),
        kv_ram: kv_in_ram.min(gpu),
        head_gpu: head == Tier::Gpu,
        vision_gpu: false,
    };
    let mut p = placement(fp, l, mode, rates, ram, expert_cap);
    p.layers = layers.to_vec();
    // The first `kv_ram` GPU layers keep their caches in RAM.
    let mut host = l.kv_ram;
    p.kv_tiers = layers
        .iter()
        .map(|&t| match t {
            Tier::Gpu if host > 0 => {
                host -= 1;
                Tier::Ram
            }
            Tier::Gpu => Tier::Gpu,
            _ => Tier::Ram,
        })
        .collect();
    p
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
