//! The engine's telemetry: a [`Snapshot`] of what the model holds where,
//! the machine's memory and disk, and the speeds just measured, sent to the
//! sink the desktop installs (a few times a second while generating).

use super::Engine;
use crate::placement::Tier;
use crate::telemetry::machine::{dir_bytes, disk_free_bytes};
use crate::telemetry::{Sink, Snapshot};

/// Speeds measured by the current or last generation.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Speeds {
    pub prompt_tokens_per_sec: f64,
    pub decode_tokens_per_sec: f64,
}

impl Engine {
    /// Where telemetry goes while generating (at most every `sink.every`).
    pub fn set_telemetry_sink(&mut self, sink: Option<Sink>) {
        self.sink = sink;
    }

    /// Reads everything now.
    pub fn telemetry(&mut self) -> Snapshot {
        let p = &self.placing.placement;
        let fp = &self.placing.footprint;
        let store = &self.store;
        let head_ram = if p.head == Tier::Ram && !fp.head_tied {
            fp.head_bytes
        } else {
            0
        };
        let head_gpu = if p.head == Tier::Gpu {
            fp.head_bytes
        } else {
            0
        };
        let machine = &mut self.placing.machine;
        let gpus = machine.gpus();
        let mut s = Snapshot {
            gpu_weight_bytes: store.tier_bytes(Tier::Gpu) + head_gpu,
            ram_weight_bytes: store.tier_bytes(Tier::Ram) + fp.embeddings_bytes + head_ram,
            disk_weight_bytes: store.tier_bytes(Tier::Disk),
            gpu_tier_bytes: store.gpu().map_or(0, |g| g.used_bytes()),
            gpus: gpus.iter().map(Into::into).collect(),
            process_ram_bytes: crate::telemetry::rss().map_or(0, |r| r.current),
            offload_folder_bytes: dir_bytes(&self.placing.request.offload_dir),
            disk_free_bytes: disk_free_bytes(&self.placing.request.offload_dir),
            prompt_tokens_per_sec: self.speeds.prompt_tokens_per_sec,
            decode_tokens_per_sec: self.speeds.decode_tokens_per_sec,
            layer_ms_per_token: self.layer_ms_per_token.clone(),
            ..Snapshot::default()
        };
        let x = store.expert_stats().snapshot();
        (s.expert_hits, s.expert_misses, s.expert_bytes_read) = (x.hits, x.misses, x.bytes_read);
        s.set_ram(machine.ram());
        s
    }

    /// After a pass of `n` tokens: keeps its per-layer times and sends a
    /// snapshot when one is due.
    pub(super) fn after_pass(&mut self, n: usize) {
        let n = n.max(1) as f64;
        self.layer_ms_per_token.clear();
        self.layer_ms_per_token
            .extend(self.scratch.layer_secs.iter().map(|s| s * 1e3 / n));
        if self.sink.as_mut().is_some_and(Sink::due) {
            let snap = self.telemetry();
            if let Some(sink) = self.sink.as_mut() {
                (sink.send)(snap);
            }
        }
    }
}
