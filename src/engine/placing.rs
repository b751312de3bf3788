//! The engine's side of placement: plan at load, apply a plan to the tier
//! store, recover from a GPU out-of-memory by re-planning with less VRAM,
//! and re-place live when the user changes mode or caps — moving only the
//! layers whose tier changes, keeping the conversation (the KV cache and
//! the cached tokens) untouched.

use std::path::PathBuf;
use std::sync::Arc;

use super::{DiskLayers, Engine, EngineError};
use crate::model::ModelError;
use crate::placement::budget::Held;
use crate::placement::footprint::Footprint;
use crate::placement::gpu::GpuTier;
use crate::placement::planner::{self, human};
use crate::placement::store::GpuCharges;
use crate::placement::{BudgetOptions, Budgets, Mode, Placement, Rates, Tier};
use crate::telemetry::machine::Machine;

/// What the user asks of placement: a mode, budgets, and optional manual
/// overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlacementRequest {
    pub mode: Mode,
    pub budget: BudgetOptions,
    /// Manual override after planning: the first layers that are not on the
    /// GPU go to disk (benchmarks of the disk tier).
    pub disk_layers: Option<DiskLayers>,
    /// Where disk-tier copies, the calibration probe and the free-disk
    /// reading go.
    pub offload_dir: PathBuf,
    /// Fault injection for the simulated GPU tier: its Nth allocation fails.
    pub fail_gpu_alloc: Option<u64>,
    /// The simulated GPU tier runs its layers as candle blocks on the CPU
    /// device (the code path of a real GPU) instead of the host kernels.
    pub simulate_with_candle: bool,
    /// Manual override: experts each disk-tier mixture-of-experts layer
    /// keeps in RAM (default: as many as the RAM budget allows).
    pub expert_cache: Option<usize>,
    /// Read disk-tier experts only when routed, never ahead (to measure
    /// what reading ahead gains).
    pub no_expert_read_ahead: bool,
}

/// What happened to placement, for the user (re-plans after an
/// out-of-memory, budgets that could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice(pub String);

/// Placement state the engine keeps.
pub(super) struct Placing {
    pub footprint: Footprint,
    pub rates: Rates,
    pub budgets: Budgets,
    pub request: PlacementRequest,
    pub placement: Placement,
    pub machine: Machine,
    pub notices: Vec<Notice>,
    /// Bytes charged to the GPU tier outside the layers: runtime reserve
    /// and the head when it is there.
    pub gpu_base_bytes: u64,
    /// Layers loaded or moved by the last placement change.
    pub last_moved: usize,
}

/// Probes the budgets for `request`. A real GPU counts only in a build with
/// the CUDA backend; otherwise its budget is zero and the note says why.
pub(super) fn probe(machine: &mut Machine, request: &PlacementRequest, held: Held) -> Budgets {
    let mut b = Budgets::probe(machine, &request.budget, &request.offload_dir, held);
    if b.vram_bytes > 0 && !b.gpu_simulated && !cfg!(feature = "cuda") {
        b.notes.push(format!(
            "{} found, but this build of Spillway has no CUDA backend (build with `--features cuda`, see the README); planning for the CPU",
            b.gpu_name.as_deref().unwrap_or("a GPU")
        ));
        b.vram_bytes = 0;
    }
    b
}

/// Plans `fp` for `request` within `budgets`, with the manual disk override.
pub fn plan_for(
    fp: &Footprint,
    budgets: &Budgets,
    request: &PlacementRequest,
    rates: &Rates,
) -> Result<Placement, EngineError> {
    let mut p = planner::plan(fp, budgets, request.mode, rates)?;
    // Manual overrides: disk layers, and experts cached per disk layer.
    let cap = request.expert_cache.filter(|_| fp.experts.is_some());
    if request.disk_layers.is_some() || cap.is_some() {
        let n = p.layers.len();
        let off_gpu = p.layers.iter().filter(|&&t| t != Tier::Gpu).count();
        let layers: Vec<Tier> = match request.disk_layers {
            Some(disk) => {
                let want = match disk {
                    DiskLayers::None => 0,
                    DiskLayers::Count(k) => k.min(off_gpu),
                    DiskLayers::All => off_gpu,
                };
                (0..n)
                    .map(|i| match p.layers[i] {
                        Tier::Gpu => Tier::Gpu,
                        _ if i < want => Tier::Disk,
                        _ => Tier::Ram,
                    })
                    .collect()
            }
            None => p.layers.clone(),
        };
        // GPU layers keep their caches where the plan put them.
        let kv_in_ram = (0..n)
            .filter(|&i| p.layers[i] == Tier::Gpu && p.kv_tiers[i] == Tier::Ram)
            .count();
        p = planner::describe(
            fp,
            &layers,
            kv_in_ram,
            p.head,
            request.mode,
            rates,
            budgets.ram_bytes,
            cap,
        );
    }
    Ok(p)
}

/// The GPU tier the budgets allow: the simulated one, or the first CUDA
/// device. A device that cannot be opened leaves the budget at zero and says
/// why in the budget notes.
pub(super) fn gpu_tier(
    budgets: &mut Budgets,
    request: &PlacementRequest,
    fp: &Footprint,
) -> Option<GpuCharges> {
    if budgets.vram_bytes == 0 {
        return None;
    }
    // Device blocks run dense layers only; the host-backed stand-in runs
    // any layer.
    let on_device = !budgets.gpu_simulated || request.simulate_with_candle;
    if fp.experts.is_some() && on_device {
        budgets.notes.push(
            "the GPU tier does not run mixture-of-experts layers yet; planning for RAM and disk"
                .into(),
        );
        budgets.vram_bytes = 0;
        return None;
    }
    let tier = if budgets.gpu_simulated {
        let budget = budgets.vram_bytes;
        if request.simulate_with_candle {
            let name = crate::placement::gpu::SIMULATED_GPU.to_string();
            let device = candle_core::Device::Cpu;
            GpuTier::on_device(name, device, budget, request.fail_gpu_alloc)
        } else {
            GpuTier::simulated(budget, request.fail_gpu_alloc)
        }
    } else {
        match open_cuda(budgets) {
            Ok(t) => t,
            Err(why) => {
                budgets.notes.push(why);
                budgets.vram_bytes = 0;
                return None;
            }
        }
    };
    Some(GpuCharges {
        tier: Arc::new(tier),
        kv_layer_bytes: fp.kv_gpu_layer_bytes.clone(),
        kv_types: fp.kv_types.on_gpu(),
        activation_bytes: fp.gpu_scratch_bytes,
        capacity: fp.context,
        chunk: fp.prompt_chunk,
    })
}

#[cfg(feature = "cuda")]
fn open_cuda(budgets: &Budgets) -> Result<GpuTier, String> {
    let name = budgets.gpu_name.clone().unwrap_or_else(|| "GPU 0".into());
    GpuTier::cuda(0, name.clone(), budgets.vram_bytes).map_err(|e| {
        format!("{name} found, but CUDA could not be opened ({e}); planning for the CPU")
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_budgets: &Budgets) -> Result<GpuTier, String> {
    Err("this build has no CUDA backend; planning for the CPU".into())
}

impl Engine {
    /// The placement in force.
    pub fn placement(&self) -> &Placement {
        &self.placing.placement
    }

    /// Whether the final norm and output head run on the GPU tier's device.
    pub fn head_on_device(&self) -> bool {
        self.model.head_on_device()
    }

    pub fn footprint(&self) -> &Footprint {
        &self.placing.footprint
    }

    pub fn budgets(&self) -> &Budgets {
        &self.placing.budgets
    }

    pub fn rates(&self) -> &Rates {
        &self.placing.rates
    }

    /// Layers loaded or moved by the last placement change (load, re-plan,
    /// [`Engine::replace`]).
    pub fn last_moved(&self) -> usize {
        self.placing.last_moved
    }

    /// Takes what happened to placement since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.placing.notices)
    }

    /// Puts every layer where `p` says, moving only those that change; on a
    /// GPU out-of-memory re-plans with what the device held and tries again.
    pub(super) fn apply_placement(
        &mut self,
        mut p: Placement,
        progress: &mut dyn FnMut(usize, usize) -> Result<(), ModelError>,
    ) -> Result<(), EngineError> {
        for _ in 0..=self.placing.footprint.n_layer() + 1 {
            let result = self.charge_gpu_base(&p).and_then(|()| {
                self.store
                    .set_expert_capacity(p.experts.iter().map(|x| x.ram).collect());
                self.store
                    .set_expert_read_ahead(!self.placing.request.no_expert_read_ahead);
                self.store.set_kv_tiers(&p.kv_tiers);
                let moved = self.store.apply(&p.layers, &mut self.kv, progress)?;
                // The head runs on the device when the plan puts it there
                // and the tier has one (the host-kernel simulation has not).
                let device = match p.head {
                    Tier::Gpu => self.store.gpu().and_then(|g| g.device.clone()),
                    _ => None,
                };
                self.model.set_device_head(device.as_ref())?;
                self.place_vision(p.vision)?;
                Ok(moved)
            });
            match result {
                Ok(moved) => {
                    self.placing.last_moved = moved;
                    self.placing.placement = p;
                    return Ok(());
                }
                Err(EngineError::Model(e)) if e.is_out_of_memory() => {
                    p = self.replan_after_oom(&e)?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Invalid(
            "the GPU kept running out of memory while re-planning".into(),
        ))
    }

    /// Charges the GPU tier's runtime reserve, and the head when the plan
    /// puts it there.
    fn charge_gpu_base(&mut self, p: &Placement) -> Result<(), EngineError> {
        let Some(gpu) = self.store.gpu().cloned() else {
            return Ok(());
        };
        let fp = &self.placing.footprint;
        let vision_gpu = p.vision == Some(Tier::Gpu);
        let uses_gpu = p.layers.contains(&Tier::Gpu) || p.head == Tier::Gpu || vision_gpu;
        let want = if uses_gpu {
            fp.gpu_runtime_bytes
                + if p.head == Tier::Gpu {
                    fp.head_bytes
                } else {
                    0
                }
                + if vision_gpu { fp.vision_bytes } else { 0 }
        } else {
            0
        };
        if want != self.placing.gpu_base_bytes {
            gpu.free(self.placing.gpu_base_bytes);
            self.placing.gpu_base_bytes = 0;
            if want > 0 {
                gpu.alloc(want, || "the runtime, output head and vision tower".into())?;
                self.placing.gpu_base_bytes = want;
            }
        }
        Ok(())
    }

    /// After an out-of-memory: the device holds no more than it held when
    /// the allocation failed; plan again within that (auto when the chosen
    /// mode no longer fits) and say so.
    fn replan_after_oom(&mut self, e: &ModelError) -> Result<Placement, EngineError> {
        let Some(gpu) = self.store.gpu().cloned() else {
            return Err(EngineError::Invalid(e.to_string()));
        };
        let held = gpu.used_bytes();
        let before = self.placing.placement.count(Tier::Gpu);
        gpu.shrink_budget(held);
        let pl = &mut self.placing;
        pl.budgets.vram_bytes = pl.budgets.vram_bytes.min(held);
        let p = match plan_for(&pl.footprint, &pl.budgets, &pl.request, &pl.rates) {
            Ok(p) => p,
            Err(_) => {
                let auto = PlacementRequest {
                    mode: Mode::Auto,
                    ..pl.request.clone()
                };
                plan_for(&pl.footprint, &pl.budgets, &auto, &pl.rates)?
            }
        };
        pl.notices.push(Notice(format!(
            "{e}. Re-planned for {} of VRAM: {} GPU layers (was {before}), {} in RAM, {} on disk; continuing.",
            human(pl.budgets.vram_bytes),
            p.count(Tier::Gpu),
            p.count(Tier::Ram),
            p.count(Tier::Disk),
        )));
        Ok(p)
    }

    /// A forward pass error during generation: an out-of-memory re-plans and
    /// moves layers (the KV cache stays valid: the failed step wrote nothing
    /// it counts), anything else is returned.
    pub(super) fn recover(&mut self, e: ModelError) -> Result<(), EngineError> {
        if !e.is_out_of_memory() || self.store.gpu().is_none() {
            return Err(e.into());
        }
        let p = self.replan_after_oom(&e)?;
        self.apply_placement(p, &mut |_, _| Ok(()))
    }

    /// Re-places the loaded model as `request` asks (mode, GPU layers, caps)
    /// without reloading it or losing the conversation. Returns the new
    /// placement; on an error the old one stays in force.
    pub fn replace(&mut self, request: PlacementRequest) -> Result<&Placement, EngineError> {
        let held = self.held();
        let mut budgets = probe(&mut self.placing.machine, &request, held);
        if self.store.gpu().is_none() && budgets.vram_bytes > 0 {
            // Open the device before planning, so a device that cannot be
            // opened is planned without.
            let gpu = gpu_tier(&mut budgets, &request, &self.placing.footprint);
            if gpu.is_some() {
                self.store.set_gpu(gpu)?;
            }
        }
        let p = plan_for(
            &self.placing.footprint,
            &budgets,
            &request,
            &self.placing.rates,
        )?;
        if let Some(g) = self.store.gpu() {
            // A new cap applies to the device from now on.
            g.set_budget(budgets.vram_bytes.max(g.used_bytes()));
        }
        self.placing.request = request;
        self.placing.budgets = budgets;
        self.apply_placement(p, &mut |_, _| Ok(()))?;
        Ok(&self.placing.placement)
    }

    /// The plan `request` would give, with its predicted speed, without
    /// applying it (the settings pane's "what if").
    pub fn preview(&mut self, request: &PlacementRequest) -> Result<Placement, EngineError> {
        let held = self.held();
        let budgets = probe(&mut self.placing.machine, request, held);
        plan_for(
            &self.placing.footprint,
            &budgets,
            request,
            &self.placing.rates,
        )
    }

    /// What the model holds now, counted back into budgets when re-planning.
    fn held(&self) -> Held {
        let p = &self.placing.placement;
        Held {
            vram_bytes: self.store.gpu().map_or(0, |g| g.used_bytes()),
            ram_bytes: p.peak.ram,
        }
    }
}
