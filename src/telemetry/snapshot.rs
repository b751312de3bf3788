//! The telemetry snapshot the engine sends a few times a second: bytes each
//! tier holds for the model, the GPU's memory and this process's share,
//! RAM, the offload folder and free disk, tokens per second, and time per
//! layer per token. Plain data, cheap to clone across a channel.

use std::time::{Duration, Instant};

use super::machine::{GpuReading, RamReading};

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Snapshot {
    /// Weight bytes the model holds in VRAM, RAM and on disk.
    pub gpu_weight_bytes: u64,
    pub ram_weight_bytes: u64,
    pub disk_weight_bytes: u64,
    /// Bytes the GPU tier holds (weights, KV cache, activations).
    pub gpu_tier_bytes: u64,
    pub gpus: Vec<GpuSnapshot>,
    pub ram_total_bytes: u64,
    pub ram_available_bytes: u64,
    /// This process's resident set.
    pub process_ram_bytes: u64,
    pub offload_folder_bytes: u64,
    pub disk_free_bytes: Option<u64>,
    pub prompt_tokens_per_sec: f64,
    pub decode_tokens_per_sec: f64,
    /// Milliseconds each layer took per token in the last pass.
    pub layer_ms_per_token: Vec<f64>,
    /// Routed experts of disk-tier layers found in their RAM cache, read
    /// from disk, and the bytes read, since the model was loaded.
    pub expert_hits: u64,
    pub expert_misses: u64,
    pub expert_bytes_read: u64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GpuSnapshot {
    pub name: String,
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub process_bytes: Option<u64>,
}

impl From<&GpuReading> for GpuSnapshot {
    fn from(g: &GpuReading) -> Self {
        GpuSnapshot {
            name: g.name.clone(),
            used_bytes: g.used_bytes,
            total_bytes: g.total_bytes,
            process_bytes: g.process_bytes,
        }
    }
}

impl Snapshot {
    pub fn set_ram(&mut self, r: RamReading) {
        self.ram_total_bytes = r.total_bytes;
        self.ram_available_bytes = r.available_bytes;
    }
}

/// Where snapshots go (the desktop's event channel), and how often.
pub struct Sink {
    pub every: Duration,
    pub send: Box<dyn FnMut(Snapshot) + Send>,
    last: Option<Instant>,
}

impl Sink {
    /// Sends at most every `every`.
    pub fn new(every: Duration, send: Box<dyn FnMut(Snapshot) + Send>) -> Self {
        Sink {
            every,
            send,
            last: None,
        }
    }

    /// Whether a snapshot is due now (and, if so, counts it as sent).
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|t| now - t < self.every) {
            return false;
        }
        self.last = Some(now);
        true
    }
}
