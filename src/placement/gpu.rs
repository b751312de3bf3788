//! The GPU tier's memory: every allocation the tier makes (a layer's
//! weights, its KV cache, a forward pass's activations) is charged here
//! against the device's budget, and a failure is a typed
//! [`ModelError::OutOfMemory`] the engine recovers from — never a panic.
//!
//! Where no GPU exists, a simulated tier stands in: CPU-backed (its layers
//! compute with the CPU kernels, so its output is bit-identical to RAM
//! layers), with a byte budget and optional fault injection (the Nth
//! allocation fails). Planning, recovery and live switching are exercised
//! against it on any machine.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Device;

use crate::model::ModelError;

#[derive(Debug)]
pub struct GpuTier {
    /// The device's name, for messages.
    pub name: String,
    /// The candle device the tier's layers run on (their weights and KV
    /// cache live there); `None` for the simulated tier that runs the host
    /// kernels.
    pub device: Option<Device>,
    budget_bytes: AtomicU64,
    used_bytes: AtomicU64,
    allocations: AtomicU64,
    /// 1-based index of an allocation made to fail (fault injection).
    fail_at: Option<u64>,
}

/// How a simulated GPU tier (a VRAM cap without an NVIDIA GPU) is named
/// everywhere it shows: it holds its layers in CPU memory.
pub const SIMULATED_GPU: &str = "simulated GPU (CPU memory)";

impl GpuTier {
    /// A CPU-backed stand-in holding at most `budget_bytes`, running the
    /// host kernels (bit-identical to RAM layers).
    pub fn simulated(budget_bytes: u64, fail_at: Option<u64>) -> Self {
        GpuTier {
            name: SIMULATED_GPU.into(),
            device: None,
            budget_bytes: AtomicU64::new(budget_bytes),
            used_bytes: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
            fail_at,
        }
    }

    /// A tier whose layers run as candle blocks on `device` (a CUDA GPU; the
    /// CPU device for tests of that path), holding at most `budget_bytes`.
    pub fn on_device(
        name: String,
        device: Device,
        budget_bytes: u64,
        fail_at: Option<u64>,
    ) -> Self {
        GpuTier {
            device: Some(device),
            name,
            ..Self::simulated(budget_bytes, fail_at)
        }
    }

    /// Opens CUDA device `ordinal` as a tier of `budget_bytes`.
    #[cfg(feature = "cuda")]
    pub fn cuda(ordinal: usize, name: String, budget_bytes: u64) -> Result<Self, ModelError> {
        let device = Device::new_cuda(ordinal)?;
        Ok(Self::on_device(name, device, budget_bytes, None))
    }

    /// Charges `bytes` for `what`, or fails as a full device does.
    pub fn alloc(&self, bytes: u64, what: impl FnOnce() -> String) -> Result<(), ModelError> {
        let n = self.allocations.fetch_add(1, Ordering::Relaxed) + 1;
        let budget = self.budget_bytes.load(Ordering::Relaxed);
        let used = self.used_bytes.load(Ordering::Relaxed);
        if self.fail_at == Some(n) || used.saturating_add(bytes) > budget {
            return Err(ModelError::OutOfMemory {
                what: what(),
                needed: bytes,
                used,
                budget,
            });
        }
        self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    pub fn free(&self, bytes: u64) {
        let _ = self
            .used_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes.load(Ordering::Relaxed)
    }

    /// Allocations made so far (fault injection counts these).
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    /// A new cap (the user changed it).
    pub fn set_budget(&self, bytes: u64) {
        self.budget_bytes.store(bytes, Ordering::Relaxed);
    }

    /// After an out-of-memory: the device holds no more than this from now
    /// on (a real device's free memory shrank, e.g. another program took it).
    pub fn shrink_budget(&self, bytes: u64) {
        let _ = self
            .budget_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.min(bytes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_and_injected_failure() {
        let g = GpuTier::simulated(100, Some(3));
        g.alloc(60, || "a".into()).unwrap();
        assert!(g.alloc(50, || "b".into()).unwrap_err().is_out_of_memory());
        // The third allocation fails although it fits.
        assert!(matches!(
            g.alloc(1, || "c".into()),
            Err(ModelError::OutOfMemory { .. })
        ));
        g.alloc(40, || "d".into()).unwrap();
        g.free(60);
        assert_eq!(g.used_bytes(), 40);
        g.shrink_budget(50);
        assert!(g.alloc(20, || "e".into()).is_err());
    }
}
