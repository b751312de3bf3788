//! Budgets: how many bytes each tier may take — free VRAM (NVML), available
//! RAM, free disk under the offload folder — after the user's caps and a
//! reserve left for other programs. Readings that cannot be made give a zero
//! budget and a note, never an error.

use std::path::Path;

use crate::telemetry::machine::{disk_free_bytes, Machine};

/// RAM left to other programs: a tenth of the machine, between 256 MiB and
/// 2 GiB.
pub fn ram_reserve_bytes(total: u64) -> u64 {
    (total / 10).clamp(256 << 20, 2 << 30)
}

/// VRAM left free on a real GPU (the desktop's own use grows).
pub const VRAM_RESERVE_BYTES: u64 = 256 << 20;

/// What the user asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetOptions {
    /// VRAM for Spillway: a cap on a real GPU; where there is none, a
    /// simulated GPU tier of this size (CPU-backed, for planning and tests).
    pub vram_bytes: Option<u64>,
    /// RAM for Spillway: a cap on what is available, or (with
    /// `ram_as_given`) the budget itself, to plan for another machine.
    pub ram_bytes: Option<u64>,
    pub ram_as_given: bool,
}

/// Bytes each tier may hold for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budgets {
    pub vram_bytes: u64,
    pub ram_bytes: u64,
    /// Free disk under the offload folder.
    pub disk_bytes: u64,
    /// The GPU's name; [`super::gpu::SIMULATED_GPU`] for the CPU-backed
    /// stand-in.
    pub gpu_name: Option<String>,
    /// The GPU tier is the CPU-backed stand-in.
    pub gpu_simulated: bool,
    /// What the reader could not see, or what was assumed.
    pub notes: Vec<String>,
}

/// What the model holds now in each tier (counted back into the budget when
/// re-planning a loaded model).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub vram_bytes: u64,
    pub ram_bytes: u64,
}

impl Budgets {
    /// Reads the machine and applies `opts`.
    pub fn probe(
        machine: &mut Machine,
        opts: &BudgetOptions,
        offload_dir: &Path,
        held: Held,
    ) -> Budgets {
        let mut notes = Vec::new();
        let gpus = machine.gpus();
        let (vram_bytes, gpu_name, gpu_simulated) = match (gpus.first(), opts.vram_bytes) {
            (Some(g), cap) => {
                if gpus.len() > 1 {
                    notes.push(format!(
                        "{} GPUs found; the model is placed on GPU 0 ({})",
                        gpus.len(),
                        g.name
                    ));
                }
                let free = g
                    .free_bytes
                    .saturating_add(held.vram_bytes)
                    .saturating_sub(VRAM_RESERVE_BYTES);
                (
                    cap.map_or(free, |c| c.min(free)),
                    Some(g.name.clone()),
                    false,
                )
            }
            (None, Some(v)) => {
                notes.push(format!(
                    "no NVIDIA GPU: a simulated GPU tier of {} (CPU-backed) stands in",
                    crate::placement::planner::human(v)
                ));
                (v, Some(super::gpu::SIMULATED_GPU.to_string()), true)
            }
            (None, None) => {
                notes.push(
                    machine
                        .gpu_note()
                        .unwrap_or("no NVIDIA GPU found; the GPU budget is zero")
                        .to_string(),
                );
                (0, None, false)
            }
        };
        let ram = machine.ram();
        let available = ram
            .available_bytes
            .saturating_add(held.ram_bytes)
            .saturating_sub(ram_reserve_bytes(ram.total_bytes));
        let ram_bytes = match opts.ram_bytes {
            Some(r) if opts.ram_as_given => r,
            Some(r) => r.min(available),
            None => available,
        };
        let disk_bytes = disk_free_bytes(offload_dir).unwrap_or_else(|| {
            notes.push(format!(
                "cannot read free space under {}",
                offload_dir.display()
            ));
            0
        });
        Budgets {
            vram_bytes,
            ram_bytes,
            disk_bytes,
            gpu_name,
            gpu_simulated,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gpu_means_zero_or_simulated() {
        let mut m = Machine::new();
        if !m.gpus().is_empty() {
            return;
        }
        let dir = Path::new(".");
        let b = Budgets::probe(&mut m, &BudgetOptions::default(), dir, Held::default());
        assert_eq!(b.vram_bytes, 0);
        assert!(b.notes.iter().any(|n| n.contains("GPU")), "{:?}", b.notes);
        assert!(b.ram_bytes > 0);
        let opts = BudgetOptions {
            vram_bytes: Some(6 << 30),
            ram_bytes: Some(16 << 30),
            ram_as_given: true,
        };
        let b = Budgets::probe(&mut m, &opts, dir, Held::default());
        assert_eq!(
            (b.vram_bytes, b.ram_bytes, b.gpu_simulated),
            (6 << 30, 16 << 30, true)
        );
        let capped = BudgetOptions {
            ram_bytes: Some(1 << 50),
            ..BudgetOptions::default()
        };
        let b = Budgets::probe(&mut m, &capped, dir, Held::default());
        assert!(b.ram_bytes < 1 << 50);
    }
}
