//! The calibration behind the planner's speed predictions: how fast this
//! machine streams memory with the compute threads (decode reads every
//! weight once and runs at memory speed), how fast its CPU kernels multiply
//! quantized weights (prompts), and how fast the disk under the offload folder reads. It takes
//! about a second, and its result is cached in the platform cache directory,
//! keyed by the CPU, the thread count and the offload folder.
//!
//! GPU rates come from NVML (memory bandwidth from bus width and clock); the
//! simulated GPU tier computes on the CPU, so it gets the CPU's rates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::GgmlDType;

use super::alloc::{AlignedBytes, DIRECT_ALIGN};
use super::planner::Rates;
use crate::kernels::formats::QActs;
use crate::model::linear::Linear;
use crate::telemetry::machine::GpuReading;

/// Rates assumed for a real GPU where it cannot be measured: a fraction of
/// its peak bandwidth, and a mid-range card's quantized matmul throughput.
const GPU_BANDWIDTH_EFFICIENCY: f64 = 0.6;
const GPU_NOMINAL_FLOPS: f64 = 20e12;
const GPU_NOMINAL_BANDWIDTH: f64 = 300e9;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CpuRates {
    pub ram_bytes_per_sec: f64,
    pub cpu_flops: f64,
    pub disk_bytes_per_sec: f64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Cached {
    key: String,
    rates: CpuRates,
}

/// Where calibrations are cached.
pub fn cache_file() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "spillway")
        .map(|d| d.cache_dir().join("calibration.json"))
}

fn key(offload_dir: &Path) -> String {
    // The folder may not exist yet: its nearest existing ancestor names the
    // filesystem measured.
    let existing = crate::telemetry::machine::nearest_existing(offload_dir);
    format!(
        "bw|{}|{}|{}",
        crate::kernels::isa::active().name(),
        crate::kernels::pool::threads(),
        std::fs::canonicalize(existing)
            .unwrap_or_else(|_| existing.to_path_buf())
            .display()
    )
}

/// The CPU and disk rates, measured once and cached.
pub fn cpu_rates(offload_dir: &Path) -> CpuRates {
    let key = key(offload_dir);
    let file = cache_file();
    if let Some(c) = file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
        .filter(|c| c.key == key)
    {
        return c.rates;
    }
    let rates = measure(offload_dir);
    if let Some(f) = file {
        // Best effort: an unwritable cache only costs a second next time.
        let _ = write_atomic(
            &f,
            &serde_json::to_vec_pretty(&Cached { key, rates }).unwrap_or_default(),
        );
    }
    rates
}

/// Every tier's rates: the CPU's measured, a real GPU's from NVML, the
/// simulated GPU's the CPU's own.
pub fn rates(offload_dir: &Path, gpu: Option<&GpuReading>, simulated: bool) -> Rates {
    let c = cpu_rates(offload_dir);
    let (gpu_bytes_per_sec, gpu_flops) = match (gpu, simulated) {
        (_, true) | (None, false) => (c.ram_bytes_per_sec, c.cpu_flops),
        (Some(g), false) => (
            g.bandwidth_bytes_per_sec.unwrap_or(GPU_NOMINAL_BANDWIDTH) * GPU_BANDWIDTH_EFFICIENCY,
            GPU_NOMINAL_FLOPS,
        ),
    };
    Rates {
        gpu_bytes_per_sec,
        gpu_flops,
        ram_bytes_per_sec: c.ram_bytes_per_sec,
        cpu_flops: c.cpu_flops,
        disk_bytes_per_sec: c.disk_bytes_per_sec,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::chat::history::write_atomic(path, bytes, &mut || Ok(()))
}

/// Runs the measurements (about a second).
pub fn measure(offload_dir: &Path) -> CpuRates {
    let ram_bytes_per_sec = measure_bandwidth().unwrap_or(10e9);
    let cpu_flops = measure_cpu().unwrap_or(50e9);
    CpuRates {
        ram_bytes_per_sec,
        cpu_flops,
        disk_bytes_per_sec: measure_disk(offload_dir).unwrap_or(200e6),
    }
}

/// Prompt throughput of the Q4_0 kernels on a 64 MiB weight (larger than
/// any cache): flops at 64 rows. (Decode is memory-bound: see
/// [`measure_bandwidth`]. This kernel's single-row rate, used for decode
/// before, predicted 7B decode 38 % slow.)
fn measure_cpu() -> Option<f64> {
    measure_flops(GgmlDType::Q4_0, 16384, 8192, 64)
}

fn measure_flops(dtype: GgmlDType, out: usize, inp: usize, m: usize) -> Option<f64> {
    let len = out * inp / dtype.block_size() * dtype.type_size();
    let mut buf = AlignedBytes::new(len).ok()?;
    // Every block: scale 1.0 (f16 0x3C00), nibbles 8 (zero after the offset).
    for block in buf.as_mut_slice().chunks_exact_mut(dtype.type_size()) {
        block[0] = 0x00;
        block[1] = 0x3C;
        block[2..].fill(0x88);
    }
    let w = Linear::shared(Arc::new(buf), 0, len, dtype, (out, inp), None).ok()?;
    let best = |m: usize| -> Option<f64> {
        let x: Vec<f32> = (0..m * inp)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.1)
            .collect();
        let mut acts = QActs::default();
        w.quantize_input(&x, m, &mut acts).ok()?;
        let mut y = vec![0f32; m * out];
        w.forward(&x, m, &acts, &mut y).ok()?;
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            w.forward(&x, m, &acts, &mut y).ok()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Some(best.max(1e-9))
    };
    Some(2.0 * (out * inp * m) as f64 / best(m)?)
}

/// How fast this machine streams memory with the compute threads: a
/// parallel read of a 256 MiB buffer (far larger than any cache), the best
/// of five (on a shared machine the others measure its neighbours). Decoding a token reads every weight once, and the kernels run at
/// memory speed, so this is the decode rate of the RAM tier.
fn measure_bandwidth() -> Option<f64> {
    const LEN: usize = 256 << 20;
    let threads = crate::kernels::pool::threads().max(1);
    let mut buf: Vec<u64> = Vec::new();
    buf.try_reserve_exact(LEN / 8).ok()?;
    buf.extend((0..LEN / 8).map(|i| i as u64));
    let chunk = buf.len().div_ceil(threads);
    let mut times = Vec::with_capacity(5);
    let mut total = 0u64;
    for _ in 0..5 {
        let t = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || {
                        // Eight independent lanes, so the adds vectorise and
                        // the loads, not the adds, set the pace.
                        let mut lanes = [0u64; 8];
                        for block in c.chunks_exact(8) {
                            for (l, v) in lanes.iter_mut().zip(block) {
                                *l = l.wrapping_add(*v);
                            }
                        }
                        lanes.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        times.push(t.elapsed().as_secs_f64());
        total = total.wrapping_add(sums.iter().fold(0, |a, &b| a.wrapping_add(b)));
    }
    std::hint::black_box(total);
    times.sort_by(f64::total_cmp);
    Some(LEN as f64 / times[0].max(1e-9))
}

/// Sequential direct-I/O reads of a 64 MiB file written under `dir`.
fn measure_disk(dir: &Path) -> Option<f64> {
    const LEN: usize = 64 << 20;
    const CHUNK: usize = 8 << 20;
    // The folder may not exist yet: measure on the filesystem it would be
    // made on (its nearest existing ancestor) rather than create it.
    let dir = crate::telemetry::machine::nearest_existing(dir);
    let path = dir.join(format!(".spillway-calibrate-{}", std::process::id()));
    let result = (|| {
        let mut buf = AlignedBytes::new(CHUNK).ok()?;
        buf.as_mut_slice().fill(0x5A);
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&path).ok()?;
            for _ in 0..LEN / CHUNK {
                f.write_all(buf.as_slice()).ok()?;
            }
            f.sync_all().ok()?;
        }
        let f = open_for_reading(&path)?;
        let t = Instant::now();
        let mut at = 0u64;
        while (at as usize) < LEN {
            crate::weights::read::read_exact_at(&f, buf.as_mut_slice(), at).ok()?;
            at += CHUNK as u64;
        }
        debug_assert_eq!(CHUNK % DIRECT_ALIGN, 0);
        Some(LEN as f64 / t.elapsed().as_secs_f64().max(1e-9))
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// The file opened for direct I/O where allowed (so the page cache, which
/// holds what was just written, does not answer), else plainly.
fn open_for_reading(path: &Path) -> Option<std::fs::File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            return Some(f);
        }
    }
    std::fs::File::open(path).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_plausible_rates() {
        let dir = tempfile::tempdir().unwrap();
        let r = super::measure(dir.path());
        assert!(
            r.ram_bytes_per_sec > 1e8 && r.ram_bytes_per_sec < 1e12,
            "{r:?}"
        );
        assert!(r.cpu_flops > 1e8 && r.cpu_flops < 1e14, "{r:?}");
        assert!(r.disk_bytes_per_sec > 1e6, "{r:?}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "the probe file is removed"
        );
    }
}
