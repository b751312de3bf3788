//! The tier store: every transformer block is resident in RAM or waits on
//! disk, and the model receives each one in order through
//! [`LayerProvider`].
//!
//! A disk layer is read by a prefetch thread into freshly allocated storage
//! while the layer before it computes, handed over through a rendezvous
//! channel, used once and dropped. So at most two disk layers exist at any
//! time (the one computing and the one waiting), and their bytes leave the
//! process when dropped; the page cache may keep the file warm, but that is
//! the kernel's memory, not ours. Reads come straight from the GGUF when it
//! is the final format, or from a copy in the offload folder.

use std::fmt;
use std::fs::File;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::QTensor;

use crate::model::hparams::HParams;
use crate::model::transformer::{LayerProvider, LayerWeights, TensorSource};
use crate::model::ModelError;
use crate::weights::gguf::{GgufFile, TensorInfo};
use crate::weights::read::{read_exact_at, read_qtensor};

use super::offload::{write_all_at_end, OffloadError, OffloadSession};

/// The memory tier a layer's weights live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    Ram,
    Disk,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Ram => "ram",
            Tier::Disk => "disk",
        })
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ram" | "cpu" => Ok(Tier::Ram),
            "disk" => Ok(Tier::Disk),
            other => Err(format!("unknown tier '{other}' (ram, disk)")),
        }
    }
}

/// Where disk-tier layers are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// Straight from the model file (it is already in its final format).
    ModelFile,
    /// From copies in a session folder under this offload folder: for a
    /// model on slow or removable storage, or weights converted at load.
    OffloadFolder(PathBuf),
}

/// A layer on disk: which file, and where each of its tensors lies in it.
#[derive(Debug)]
struct DiskLayer {
    file: Arc<File>,
    tensors: Vec<TensorInfo>,
}

enum Slot {
    Resident(Box<LayerWeights>),
    Disk(DiskLayer),
}

/// Reads named tensors of one layer from a file.
struct FileTensors<'a> {
    file: &'a File,
    tensors: &'a [TensorInfo],
    layer: usize,
}

impl TensorSource for FileTensors<'_> {
    fn qtensor(&mut self, suffix: &str) -> Result<QTensor, ModelError> {
        let info = self
            .tensors
            .iter()
            .find(|t| t.name == suffix)
            .ok_or_else(|| {
                ModelError::Format(format!("tensor blk.{}.{suffix} is missing", self.layer))
            })?;
        Ok(read_qtensor(self.file, info)?)
    }
}

/// Counters the prefetch path updates; read for telemetry and benchmarks.
#[derive(Debug, Default)]
pub struct DiskStats {
    /// Bytes read from disk for disk-tier layers.
    pub bytes_read: AtomicU64,
    /// Time the compute thread waited for a disk layer, in nanoseconds.
    pub wait_nanos: AtomicU64,
    /// Time the prefetch thread spent reading, in nanoseconds.
    pub read_nanos: AtomicU64,
}

pub struct LayerStore {
    hp: HParams,
    model_file: Arc<File>,
    /// Each layer's tensors as they lie in the model file (names are the
    /// suffix after `blk.N.`).
    layer_tensors: Vec<Vec<TensorInfo>>,
    slots: Vec<Slot>,
    disk_source: DiskSource,
    offload: Option<OffloadSession>,
    pub stats: DiskStats,
}

impl LayerStore {
    /// Checks every block's tensor table, then loads each layer into the tier
    /// `tiers[i]`. `progress(done, total)` is called after each layer.
    pub fn load(
        gguf: &GgufFile,
        hp: &HParams,
        tiers: &[Tier],
        disk_source: DiskSource,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        if tiers.len() != hp.n_layer {
            return Err(ModelError::Format(format!(
                "{} tiers given for {} layers",
                tiers.len(),
                hp.n_layer
            )));
        }
        let file = File::open(&gguf.path)
            .map_err(|e| ModelError::Format(format!("cannot open {}: {e}", gguf.path.display())))?;
        let expected = LayerWeights::expected_shapes(hp);
        let mut layer_tensors = Vec::with_capacity(hp.n_layer);
        for i in 0..hp.n_layer {
            let prefix = format!("blk.{i}.");
            let mut tensors = Vec::with_capacity(expected.len());
            for (suffix, shape) in &expected {
                let name = format!("{prefix}{suffix}");
                let info = gguf
                    .tensor(&name)
                    .ok_or_else(|| ModelError::Format(format!("tensor {name} is missing")))?;
                if &info.shape != shape {
                    return Err(ModelError::Format(format!(
                        "tensor {name} has shape {:?}, expected {shape:?}",
                        info.shape
                    )));
                }
                tensors.push(TensorInfo {
                    name: suffix.to_string(),
                    ..info.clone()
                });
            }
            layer_tensors.push(tensors);
        }
        let mut store = LayerStore {
            hp: hp.clone(),
            model_file: Arc::new(file),
            slots: Vec::with_capacity(hp.n_layer),
            layer_tensors,
            disk_source,
            offload: None,
            stats: DiskStats::default(),
        };
        for (i, &tier) in tiers.iter().enumerate() {
            let slot = store.make_slot(i, tier)?;
            store.slots.push(slot);
            progress(i + 1, hp.n_layer);
        }
        Ok(store)
    }

    fn make_slot(&mut self, i: usize, tier: Tier) -> Result<Slot, ModelError> {
        Ok(match tier {
            Tier::Ram => Slot::Resident(Box::new(LayerWeights::load(
                &self.hp,
                &mut FileTensors {
                    file: &self.model_file,
                    tensors: &self.layer_tensors[i],
                    layer: i,
                },
            )?)),
            Tier::Disk => Slot::Disk(self.disk_layer(i)?),
        })
    }

    fn disk_layer(&mut self, i: usize) -> Result<DiskLayer, ModelError> {
        let root = match &self.disk_source {
            DiskSource::ModelFile => {
                return Ok(DiskLayer {
                    file: self.model_file.clone(),
                    tensors: self.layer_tensors[i].clone(),
                })
            }
            DiskSource::OffloadFolder(root) => root.clone(),
        };
        let offload_err = |e: OffloadError| ModelError::Format(e.to_string());
        if self.offload.is_none() {
            self.offload = Some(OffloadSession::create(&root).map_err(offload_err)?);
        }
        let Some(session) = self.offload.as_ref() else {
            unreachable!("session created above")
        };
        let (mut file, path) = session
            .create_file(&format!("layer-{i}.bin"))
            .map_err(offload_err)?;
        let mut tensors = Vec::with_capacity(self.layer_tensors[i].len());
        let mut offset = 0u64;
        let mut buf = Vec::new();
        for t in &self.layer_tensors[i] {
            // Keep each tensor 64-byte aligned in the copy, as in GGUF.
            let pad = offset.next_multiple_of(64) - offset;
            write_all_at_end(&mut file, &path, &vec![0u8; pad as usize]).map_err(offload_err)?;
            offset += pad;
            buf.resize(t.size_bytes as usize, 0);
            read_exact_at(&self.model_file, &mut buf, t.file_offset)
                .map_err(|e| ModelError::Format(format!("cannot read tensor {}: {e}", t.name)))?;
            write_all_at_end(&mut file, &path, &buf).map_err(offload_err)?;
            tensors.push(TensorInfo {
                file_offset: offset,
                ..t.clone()
            });
            offset += t.size_bytes;
        }
        Ok(DiskLayer {
            file: Arc::new(file),
            tensors,
        })
    }

    /// Moves layer `i` to `tier`; a no-op when it is there already.
    pub fn set_tier(&mut self, i: usize, tier: Tier) -> Result<(), ModelError> {
        if i >= self.slots.len() {
            return Err(ModelError::Format(format!("no layer {i}")));
        }
        if self.tier(i) != tier {
            self.slots[i] = self.make_slot(i, tier)?;
        }
        Ok(())
    }

    pub fn n_layers(&self) -> usize {
        self.slots.len()
    }

    pub fn tier(&self, i: usize) -> Tier {
        match self.slots[i] {
            Slot::Resident(_) => Tier::Ram,
            Slot::Disk(_) => Tier::Disk,
        }
    }

    pub fn tiers(&self) -> Vec<Tier> {
        (0..self.n_layers()).map(|i| self.tier(i)).collect()
    }

    /// Exact bytes of layer `i`'s weights in their stored types.
    pub fn layer_bytes(&self, i: usize) -> u64 {
        self.layer_tensors[i].iter().map(|t| t.size_bytes).sum()
    }

    /// Bytes of all layers held in `tier`.
    pub fn tier_bytes(&self, tier: Tier) -> u64 {
        (0..self.n_layers())
            .filter(|&i| self.tier(i) == tier)
            .map(|i| self.layer_bytes(i))
            .sum()
    }

    /// Bytes the offload folder holds for this model.
    pub fn offload_bytes(&self) -> u64 {
        self.offload.as_ref().map_or(0, OffloadSession::bytes_used)
    }

    fn read_disk_layer(&self, i: usize, d: &DiskLayer) -> Result<LayerWeights, ModelError> {
        let start = Instant::now();
        let w = LayerWeights::load(
            &self.hp,
            &mut FileTensors {
                file: &d.file,
                tensors: &d.tensors,
                layer: i,
            },
        )?;
        let bytes: u64 = d.tensors.iter().map(|t| t.size_bytes).sum();
        self.stats.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.stats
            .read_nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(w)
    }
}

impl LayerProvider for LayerStore {
    fn for_each_layer(
        &self,
        f: &mut dyn FnMut(usize, &LayerWeights) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        let disk: Vec<usize> = (0..self.slots.len())
            .filter(|&i| matches!(self.slots[i], Slot::Disk(_)))
            .collect();
        if disk.is_empty() {
            for (i, slot) in self.slots.iter().enumerate() {
                if let Slot::Resident(w) = slot {
                    f(i, w)?;
                }
            }
            return Ok(());
        }
        std::thread::scope(|s| {
            // Rendezvous: the prefetcher holds at most one finished layer
            // while the compute thread uses another.
            let (tx, rx) = crossbeam_channel::bounded::<Result<LayerWeights, ModelError>>(0);
            let slots = &self.slots;
            s.spawn(move || {
                for i in disk {
                    let Slot::Disk(d) = &slots[i] else { continue };
                    let r = self.read_disk_layer(i, d);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
            for (i, slot) in self.slots.iter().enumerate() {
                match slot {
                    Slot::Resident(w) => f(i, w)?,
                    Slot::Disk(_) => {
                        let waited = Instant::now();
                        let w = rx.recv().map_err(|_| ModelError::PrefetchLost)??;
                        self.stats
                            .wait_nanos
                            .fetch_add(waited.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        f(i, &w)?;
                    }
                }
            }
            Ok(())
        })
    }
}
