//! The tier store: every transformer block is resident in RAM or waits on
//! disk, and the model receives each one in order through
//! [`LayerProvider`].
//!
//! A disk layer is read by a prefetch thread while the layer before it
//! computes, handed over through a rendezvous channel, used once and given
//! back. Its bytes are one contiguous span of the file, read with one
//! direct (`O_DIRECT`, page-cache-bypassing) positioned read into one of two
//! aligned buffers that are reused token after token; the layer's
//! projections point into the buffer rather than copying it. So at most two
//! disk layers exist at any time (the one computing and the one being read),
//! nothing is allocated or faulted in per token, and no CPU time goes to
//! page-cache copies. Where direct I/O is refused (tmpfs, some network file
//! systems) the same reads go through the page cache. Reads come straight
//! from the GGUF when it is the final format, or from a copy in the offload
//! folder.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::quantized::QTensor;

use crate::model::device_block::{DeviceBlock, DeviceRope};
use crate::model::hparams::HParams;
use crate::model::kv_cache::KvCache;
use crate::model::linear::Linear;
use crate::model::transformer::{Block, ExpertSource, LayerProvider, LayerWeights, TensorSource};
use crate::model::ModelError;
use crate::weights::gguf::{GgufFile, TensorInfo};
use crate::weights::read::{qtensor_from_bytes, read_exact_at, read_qtensor};

use super::alloc::{AlignedBytes, DIRECT_ALIGN};
use super::experts::{ExpertCache, ExpertIo};
pub use super::experts::{ExpertCounts, ExpertStats};
use super::gpu::GpuTier;
use super::offload::{write_all_at_end, OffloadError, OffloadSession};

/// The memory tier a layer's weights live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// VRAM of the GPU tier (a real GPU, or the CPU-backed stand-in).
    Gpu,
    Ram,
    Disk,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Gpu => "gpu",
            Tier::Ram => "ram",
            Tier::Disk => "disk",
        })
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "gpu" | "vram" | "cuda" => Ok(Tier::Gpu),
            "ram" | "cpu" => Ok(Tier::Ram),
            "disk" => Ok(Tier::Disk),
            other => Err(format!("unknown tier '{other}' (gpu, ram, disk)")),
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
#[derive(Debug, Clone)]
struct DiskLayer {
    file: Arc<File>,
    /// The same file opened for direct I/O, where the system allows it.
    direct: Option<Arc<File>>,
    tensors: Vec<TensorInfo>,
    /// The aligned file span holding every tensor, when they lie together
    /// (as in every GGUF writer's output); otherwise tensors are read one by
    /// one.
    span: Option<Span>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    /// File offset, a multiple of [`DIRECT_ALIGN`].
    pub(super) start: u64,
    /// Bytes from `start` to the end of the last tensor.
    pub(super) len: usize,
}

impl Span {
    /// The span of `tensors` when they lie together, allowing for alignment
    /// padding between them.
    fn of(tensors: &[TensorInfo]) -> Option<Span> {
        let lo = tensors.iter().map(|t| t.file_offset).min()?;
        let hi = tensors.iter().map(|t| t.file_offset + t.size_bytes).max()?;
        let sum: u64 = tensors.iter().map(|t| t.size_bytes).sum();
        if hi - lo > sum + sum / 8 + 65536 {
            return None;
        }
        let start = lo / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
        Some(Span {
            start,
            len: usize::try_from(hi - start).ok()?,
        })
    }

    /// Buffer bytes a direct read needs: whole aligned blocks.
    pub(super) fn buffer_len(self) -> usize {
        self.len.next_multiple_of(DIRECT_ALIGN)
    }
}

/// Opens `path` for direct I/O (Linux), or `None` where that is refused.
fn open_direct(path: &std::path::Path) -> Option<Arc<File>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
            .map(Arc::new)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// Concurrent requests per direct read: devices (NVMe, virtual disks)
/// reach their bandwidth only with several requests in flight.
const READ_QUEUE: usize = 4;

/// Smallest piece worth its own request.
const MIN_PIECE: usize = 256 << 10;

/// [`read_one`] split into up to [`READ_QUEUE`] aligned pieces read at once.
fn read_direct(file: &File, buf: &mut [u8], span: Span) -> std::io::Result<()> {
    let pieces = (span.len / MIN_PIECE).clamp(1, READ_QUEUE);
    if pieces == 1 {
        return read_one(file, buf, span);
    }
    let piece = span.len.div_ceil(pieces).next_multiple_of(DIRECT_ALIGN);
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(pieces);
        let mut rest = &mut buf[..span.buffer_len()];
        let mut at = 0;
        while at < span.len {
            let len = piece.min(span.len - at);
            let (head, tail) =
                rest.split_at_mut(len.next_multiple_of(DIRECT_ALIGN).min(rest.len()));
            rest = tail;
            let part = Span {
                start: span.start + at as u64,
                len,
            };
            handles.push(s.spawn(move || read_one(file, head, part)));
            at += len;
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a read thread panicked")))
            })
            .collect::<std::io::Result<Vec<()>>>()
            .map(drop)
    })
}

/// Reads `span` into `buf` with direct I/O: whole aligned blocks from an
/// aligned offset (the last read may stop short at the end of the file).
pub(super) fn read_one(file: &File, buf: &mut [u8], span: Span) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < span.len {
            let end = span.buffer_len().min(buf.len());
            let n = file.read_at(&mut buf[done..end], span.start + done as u64)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = (file, buf, span);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

enum Slot {
    Resident(Box<LayerWeights>),
    /// A mixture-of-experts layer whose dense part is in RAM and whose
    /// experts are read from disk when routed to (through its cache).
    Experts(Box<LayerWeights>),
    Disk(DiskLayer),
    /// A layer of the GPU tier, the bytes charged for it (weights and KV
    /// cache) on the device, and whether its KV cache is in RAM instead
    /// (the host cache holds it; attention runs on the host).
    Gpu(GpuLayer, u64, bool),
}

enum GpuLayer {
    /// The simulated tier: host weights, host kernels.
    Host(Box<LayerWeights>),
    /// Weights (and KV cache, unless it is in RAM) on the tier's candle
    /// device.
    Device(Box<DeviceBlock>),
}

/// Layer `layer`'s tensor named `suffix` (the name after `blk.N.`).
pub(super) fn find_tensor<'t>(
    tensors: &'t [TensorInfo],
    suffix: &str,
    layer: usize,
) -> Result<&'t TensorInfo, ModelError> {
    tensors
        .iter()
        .find(|t| t.name == suffix)
        .ok_or_else(|| ModelError::Format(format!("tensor blk.{layer}.{suffix} is missing")))
}

/// Reads named tensors of one layer from a file.
struct FileTensors<'a> {
    file: &'a File,
    tensors: &'a [TensorInfo],
    layer: usize,
    /// Where the experts come from when they stay on disk.
    experts: Option<Arc<dyn ExpertSource>>,
}

impl TensorSource for FileTensors<'_> {
    fn qtensor(&mut self, suffix: &str) -> Result<QTensor, ModelError> {
        Ok(read_qtensor(
            self.file,
            find_tensor(self.tensors, suffix, self.layer)?,
        )?)
    }

    fn experts(&mut self) -> Option<Arc<dyn ExpertSource>> {
        self.experts.clone()
    }
}

/// A disk layer's tensors inside its read buffer.
struct BufferTensors<'a> {
    buf: &'a Arc<AlignedBytes>,
    start: u64,
    tensors: &'a [TensorInfo],
    layer: usize,
}

impl BufferTensors<'_> {
    fn find(&self, suffix: &str) -> Result<(&TensorInfo, usize, usize), ModelError> {
        let info = find_tensor(self.tensors, suffix, self.layer)?;
        let at = (info.file_offset - self.start) as usize;
        Ok((info, at, info.size_bytes as usize))
    }
}

impl TensorSource for BufferTensors<'_> {
    fn qtensor(&mut self, suffix: &str) -> Result<QTensor, ModelError> {
        let (info, at, len) = self.find(suffix)?;
        Ok(qtensor_from_bytes(
            info,
            &self.buf.as_slice()[at..at + len],
        )?)
    }

    fn linear(&mut self, suffix: &str, bias: Option<Vec<f32>>) -> Result<Linear, ModelError> {
        let (info, at, len) = self.find(suffix)?;
        let (out, inp) = crate::model::linear::flat_dims(&info.shape)?;
        Linear::shared(
            self.buf.clone(),
            at,
            len,
            info.ggml_type.to_candle(),
            (out, inp),
            bias,
        )
    }
}

/// A disk layer as the prefetcher hands it over: the weights, and the read
/// buffer they point into (to be given back once they are dropped).
type Fetched = (LayerWeights, Option<Arc<AlignedBytes>>);

/// A read started after one forward pass for the next.
struct ReadAhead {
    layer: usize,
    handle: std::thread::JoinHandle<(Result<Fetched, ModelError>, u64)>,
}

/// Read buffers in flight: at least two (the layer computing and the one
/// being read); small layers get more, up to this many bytes in all, so the
/// disk always has several layers' requests queued.
const READ_AHEAD_BYTES: usize = 32 << 20;
const MAX_READ_BUFFERS: usize = 16;

/// Read buffers the disk tier keeps for layers of `span_bytes` each.
pub fn staging_buffers(span_bytes: usize) -> usize {
    (READ_AHEAD_BYTES / span_bytes.max(1)).clamp(2, MAX_READ_BUFFERS)
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
    /// The model file opened for direct I/O, where allowed.
    model_direct: Option<Arc<File>>,
    /// Disk-layer read buffers, reused across forward passes.
    buffers: Mutex<Vec<AlignedBytes>>,
    /// The next pass's first disk layer, being read.
    read_ahead: Mutex<Option<ReadAhead>>,
    pub stats: DiskStats,
    /// What the layers' expert caches share (counters, buffers, reader
    /// threads).
    expert_io: Arc<ExpertIo>,
    /// Experts each disk-tier layer's cache holds (from the plan).
    expert_capacity: Vec<usize>,
    gpu: Option<GpuCharges>,
    /// Where GPU layers keep their KV caches (see [`LayerStore::set_kv_tiers`]).
    kv_tiers: Vec<Tier>,
    /// The rotary tables on the GPU tier's device, when it has one.
    rope: Option<DeviceRope>,
}

/// The GPU tier a store charges, and what it charges besides weights.
#[derive(Debug, Clone)]
pub struct GpuCharges {
    pub tier: Arc<GpuTier>,
    /// Each GPU layer's KV cache for the whole context.
    pub kv_layer_bytes: Vec<u64>,
    /// How the GPU tier stores keys and values (f32 or f16).
    pub kv_types: crate::kernels::kv::KvTypes,
    /// A forward pass's activations on the device.
    pub activation_bytes: u64,
    /// The context length.
    pub capacity: usize,
    /// Tokens a forward pass runs at most (sizes sliding windows' caches).
    pub chunk: usize,
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
        let mut store = Self::new(gguf, hp, disk_source, None)?;
        let mut no_kv = KvCache::new(hp.n_layer, hp.n_head_kv, hp.head_dim, 0);
        let _ = store.apply(tiers, &mut no_kv, &mut |d, t| {
            progress(d, t);
            Ok(())
        })?;
        Ok(store)
    }

    /// Checks every block's tensor table; no layer is loaded yet (see
    /// [`LayerStore::apply`]).
    pub fn new(
        gguf: &GgufFile,
        hp: &HParams,
        disk_source: DiskSource,
        gpu: Option<GpuCharges>,
    ) -> Result<Self, ModelError> {
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
        let expert_io = ExpertIo::new(true);
        let mut store = LayerStore {
            hp: hp.clone(),
            model_file: Arc::new(file),
            slots: Vec::with_capacity(hp.n_layer),
            layer_tensors,
            disk_source,
            offload: None,
            model_direct: open_direct(&gguf.path),
            buffers: Mutex::new(Vec::new()),
            read_ahead: Mutex::new(None),
            stats: DiskStats::default(),
            expert_io,
            expert_capacity: Vec::new(),
            gpu: None,
            kv_tiers: Vec::new(),
            rope: None,
        };
        store.set_gpu(gpu)?;
        Ok(store)
    }

    /// How many experts each disk-tier layer keeps in RAM (the plan's
    /// split); layers placed afterwards use it.
    pub fn set_expert_capacity(&mut self, per_layer: Vec<usize>) {
        self.expert_capacity = per_layer;
    }

    /// Whether disk-tier experts the next layer will probably use are read
    /// while the layer before it computes (on by default).
    pub fn set_expert_read_ahead(&self, on: bool) {
        self.expert_io.set_read_ahead(on);
    }

    pub fn expert_read_ahead(&self) -> bool {
        self.expert_io.read_ahead()
    }

    /// Experts read from disk (mixture-of-experts layers on the disk tier).
    pub fn expert_stats(&self) -> &ExpertStats {
        &self.expert_io.stats
    }

    /// Gives the store a GPU tier (or takes it away) while no layer is on it.
    pub fn set_gpu(&mut self, gpu: Option<GpuCharges>) -> Result<(), ModelError> {
        if self.slots.iter().any(|s| matches!(s, Slot::Gpu(..))) {
            return Err(ModelError::Format("the GPU tier still holds layers".into()));
        }
        self.rope = match gpu
            .as_ref()
            .and_then(|g| g.tier.device.as_ref().map(|d| (g, d)))
        {
            Some((g, device)) => Some(DeviceRope::new(&self.hp, g.capacity, device)?),
            None => None,
        };
        self.gpu = gpu;
        Ok(())
    }

    /// The GPU tier this store charges, if any.
    pub fn gpu(&self) -> Option<&Arc<GpuTier>> {
        self.gpu.as_ref().map(|g| &g.tier)
    }

    /// Puts layer `i` in `tiers[i]` for every layer: loads the layers not
    /// yet loaded and moves only those whose tier changes. Layers leaving a
    /// faster tier move first, so memory is freed before it is taken.
    /// `progress(done, total)` counts the layers loaded or moved; so does
    /// the result. On an error the layers placed so far stay placed, so a
    /// re-planned call can carry on from there.
    pub fn apply(
        &mut self,
        tiers: &[Tier],
        kv: &mut KvCache,
        progress: &mut dyn FnMut(usize, usize) -> Result<(), ModelError>,
    ) -> Result<usize, ModelError> {
        let n = self.hp.n_layer;
        if tiers.len() != n {
            return Err(ModelError::Format(format!(
                "{} tiers given for {n} layers",
                tiers.len()
            )));
        }
        if tiers.contains(&Tier::Gpu) && self.gpu.is_none() {
            return Err(ModelError::Format("no GPU tier to place layers on".into()));
        }
        let rank = |t: Tier| match t {
            Tier::Gpu => 0,
            Tier::Ram => 1,
            Tier::Disk => 2,
        };
        let loaded = self.slots.len();
        let moving: Vec<usize> = (0..loaded)
            .filter(|&i| self.needs_move(i, tiers[i]))
            .collect();
        let total = moving.len() + (n - loaded);
        let mut done = 0;
        let (down, up): (Vec<usize>, Vec<usize>) = moving.into_iter().partition(|&i| {
            rank(tiers[i]) > rank(self.tier(i)) || (tiers[i] == Tier::Gpu && self.kv_in_ram(i))
        });
        for i in down.into_iter().chain(up) {
            self.set_tier(i, tiers[i], kv)?;
            done += 1;
            progress(done, total)?;
        }
        for (i, &tier) in tiers.iter().enumerate().skip(loaded) {
            let slot = self.make_slot(i, tier)?;
            self.slots.push(slot);
            done += 1;
            progress(done, total)?;
        }
        Ok(done)
    }

    fn make_slot(&mut self, i: usize, tier: Tier) -> Result<Slot, ModelError> {
        Ok(match tier {
            Tier::Ram => Slot::Resident(Box::new(LayerWeights::load(
                &self.hp,
                &mut FileTensors {
                    file: &self.model_file,
                    tensors: &self.layer_tensors[i],
                    layer: i,
                    experts: None,
                },
            )?)),
            Tier::Disk if self.hp.moe.is_some() => {
                let d = self.disk_layer(i)?;
                let capacity = self.expert_capacity.get(i).copied().unwrap_or(0);
                let cache = ExpertCache::new(
                    d.file.clone(),
                    d.direct.clone(),
                    i,
                    &d.tensors,
                    capacity,
                    self.expert_io.clone(),
                )?;
                Slot::Experts(Box::new(LayerWeights::load(
                    &self.hp,
                    &mut FileTensors {
                        file: &d.file,
                        tensors: &d.tensors,
                        layer: i,
                        experts: Some(cache),
                    },
                )?))
            }
            Tier::Disk => Slot::Disk(self.disk_layer(i)?),
            Tier::Gpu => {
                let Some(g) = self.gpu.clone() else {
                    return Err(ModelError::Format("no GPU tier to place layers on".into()));
                };
                let kv_in_ram = self.kv_in_ram(i);
                let kv_bytes = if kv_in_ram {
                    0
                } else {
                    g.kv_layer_bytes.get(i).copied().unwrap_or(0)
                };
                let bytes = self.layer_bytes(i) + kv_bytes;
                g.tier.alloc(bytes, || format!("layer {i}"))?;
                let mut src = FileTensors {
                    file: &self.model_file,
                    tensors: &self.layer_tensors[i],
                    layer: i,
                    experts: None,
                };
                let layer = match &g.tier.device {
                    Some(device) => DeviceBlock::load(
                        &self.hp,
                        i,
                        &mut src,
                        device,
                        g.capacity,
                        g.chunk,
                        (!kv_in_ram).then_some(g.kv_types),
                    )
                    .map(|b| GpuLayer::Device(Box::new(b))),
                    None => {
                        LayerWeights::load(&self.hp, &mut src).map(|w| GpuLayer::Host(Box::new(w)))
                    }
                };
                match layer {
                    Ok(layer) => Slot::Gpu(layer, bytes, kv_in_ram),
                    Err(e) => {
                        g.tier.free(bytes);
                        return Err(e);
                    }
                }
            }
        })
    }

    fn disk_layer(&mut self, i: usize) -> Result<DiskLayer, ModelError> {
        let root = match &self.disk_source {
            DiskSource::ModelFile => {
                return Ok(DiskLayer {
                    file: self.model_file.clone(),
                    direct: self.model_direct.clone(),
                    span: Span::of(&self.layer_tensors[i]),
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
            direct: open_direct(&path),
            span: Span::of(&tensors),
            tensors,
        })
    }

    /// Moves layer `i` to `tier`; a no-op when it is there already. The
    /// layer's cached keys and values (the first `kv.len()` positions) move
    /// with it between host memory and a GPU device.
    pub fn set_tier(&mut self, i: usize, tier: Tier, kv: &mut KvCache) -> Result<(), ModelError> {
        if i >= self.slots.len() {
            return Err(ModelError::Format(format!("no layer {i}")));
        }
        if let (Slot::Gpu(..), Tier::Gpu, true) = (&self.slots[i], tier, self.needs_move(i, tier)) {
            return self.move_kv(i, kv);
        }
        if self.needs_move(i, tier) {
            // A read-ahead may be for a layer that moves; let it finish
            // unseen (it owns what it reads).
            self.read_ahead
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            // The new copy is made before the old one goes, so a failure
            // leaves the layer where it was; the two are in different tiers,
            // so neither tier holds both.
            let new = self.make_slot(i, tier)?;
            let len = kv.len();
            let on_device = |s: &Slot| match s {
                Slot::Gpu(GpuLayer::Device(block), ..) => block.kv_on_device(),
                _ => false,
            };
            if let (Slot::Gpu(GpuLayer::Device(block), ..), true) = (&new, on_device(&new)) {
                if let Some((k, v)) = kv.rows(i, len) {
                    if let Err(e) = block.import_kv(&k, &v, len) {
                        self.release(new);
                        return Err(e);
                    }
                }
            }
            if let (Slot::Gpu(GpuLayer::Device(block), ..), true) =
                (&self.slots[i], on_device(&self.slots[i]))
            {
                if len > 0 {
                    let (k, v) = block.export_kv(len)?;
                    kv.import(i, len, &k, &v)?;
                }
            }
            if on_device(&new) {
                kv.release(i);
            }
            let old = std::mem::replace(&mut self.slots[i], new);
            self.release(old);
        }
        Ok(())
    }

    /// Moves GPU layer `i`'s KV cache to where the plan wants it (between
    /// the device and the host cache), its weights staying in place.
    fn move_kv(&mut self, i: usize, kv: &mut KvCache) -> Result<(), ModelError> {
        let Some(g) = self.gpu.clone() else {
            return Err(ModelError::Format("no GPU tier to place layers on".into()));
        };
        let to_ram = self.kv_in_ram(i);
        let kv_bytes = g.kv_layer_bytes.get(i).copied().unwrap_or(0);
        let len = kv.len();
        let Slot::Gpu(layer, bytes, in_ram) = &mut self.slots[i] else {
            return Err(ModelError::Format(format!("layer {i} is not on the GPU")));
        };
        if to_ram {
            if let GpuLayer::Device(block) = layer {
                if len > 0 {
                    let (k, v) = block.export_kv(len)?;
                    kv.import(i, len, &k, &v)?;
                }
                block.drop_cache();
            }
            g.tier.free(kv_bytes);
            *bytes -= kv_bytes;
        } else {
            g.tier.alloc(kv_bytes, || format!("layer {i}'s KV cache"))?;
            if let GpuLayer::Device(block) = layer {
                let made = block
                    .make_cache(g.kv_types)
                    .and_then(|()| match kv.rows(i, len) {
                        Some((k, v)) => block.import_kv(&k, &v, len),
                        None => Ok(()),
                    });
                if let Err(e) = made {
                    block.drop_cache();
                    g.tier.free(kv_bytes);
                    return Err(e);
                }
                kv.release(i);
            }
            *bytes += kv_bytes;
        }
        *in_ram = to_ram;
        Ok(())
    }

    /// Gives back what a dropped slot charged the GPU tier.
    fn release(&self, slot: Slot) {
        if let (Slot::Gpu(_, bytes, _), Some(g)) = (&slot, &self.gpu) {
            g.tier.free(*bytes);
        }
    }

    pub fn n_layers(&self) -> usize {
        self.slots.len()
    }

    /// Whether layer `i` must be rebuilt to be in `tier` with its KV cache
    /// where the plan wants it.
    fn needs_move(&self, i: usize, tier: Tier) -> bool {
        match &self.slots[i] {
            Slot::Gpu(_, _, in_ram) => tier != Tier::Gpu || *in_ram != self.kv_in_ram(i),
            _ => self.tier(i) != tier,
        }
    }

    /// Whether GPU layer `i` is to keep its KV cache in RAM (the plan's
    /// `kv_tiers`).
    fn kv_in_ram(&self, i: usize) -> bool {
        self.kv_tiers.get(i) == Some(&Tier::Ram)
    }

    /// Where each GPU layer placed from now on keeps its KV cache (the
    /// plan's `kv_tiers`; RAM or GPU). Empty: on the GPU.
    pub fn set_kv_tiers(&mut self, kv_tiers: &[Tier]) {
        self.kv_tiers = kv_tiers.to_vec();
    }

    /// The tier of each layer's KV cache as placed: RAM unless a GPU layer
    /// keeps it on the device.
    pub fn kv_tiers(&self) -> Vec<Tier> {
        self.slots
            .iter()
            .map(|s| match s {
                Slot::Gpu(_, _, false) => Tier::Gpu,
                _ => Tier::Ram,
            })
            .collect()
    }

    pub fn tier(&self, i: usize) -> Tier {
        match self.slots[i] {
            Slot::Resident(_) => Tier::Ram,
            Slot::Disk(_) | Slot::Experts(_) => Tier::Disk,
            Slot::Gpu(..) => Tier::Gpu,
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

    /// Buffer bytes of the largest disk layer (`usize::MAX` for a layer read
    /// tensor by tensor, or when no layer is on disk).
    fn largest_disk_span(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| match s {
                Slot::Disk(d) => Some(d.span.map_or(usize::MAX, Span::buffer_len)),
                Slot::Resident(_) | Slot::Experts(_) | Slot::Gpu(..) => None,
            })
            .max()
            .unwrap_or(usize::MAX)
            .max(1)
    }

    /// How many disk-layer read buffers may exist (see [`READ_AHEAD_BYTES`]).
    fn read_buffers(&self) -> usize {
        staging_buffers(self.largest_disk_span())
    }

    /// Layers read at once: enough for about 8 MiB of requests in flight
    /// (small layers alone leave the device idle between requests), fewer
    /// than the buffers so one stays with the compute thread.
    fn reads_in_flight(&self, n_buffers: usize) -> usize {
        ((8 << 20) / self.largest_disk_span()).clamp(1, n_buffers - 1)
    }

    /// [`fetch`] with the read counted in the stats.
    fn read_disk_layer(
        &self,
        i: usize,
        d: &DiskLayer,
        buf: Option<AlignedBytes>,
    ) -> Result<Fetched, ModelError> {
        let start = Instant::now();
        let fetched = fetch(&self.hp, i, d, buf)?;
        self.count_read(d, start.elapsed().as_nanos() as u64);
        Ok(fetched)
    }

    fn count_read(&self, d: &DiskLayer, nanos: u64) {
        let bytes: u64 = d.tensors.iter().map(|t| t.size_bytes).sum();
        self.stats.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.stats.read_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// After a forward pass: starts reading the first disk layer of the
    /// next one into a free buffer, so the disk keeps working while the
    /// output head and the sampler run.
    fn start_read_ahead(&self) {
        let Some((i, Slot::Disk(d))) = self
            .slots
            .iter()
            .enumerate()
            .find(|(_, s)| matches!(s, Slot::Disk(_)))
        else {
            return;
        };
        let buf = self.buffers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (hp, d) = (self.hp.clone(), d.clone());
        let handle = std::thread::Builder::new()
            .name("spillway-read-ahead".into())
            .spawn(move || {
                let start = Instant::now();
                let r = fetch(&hp, i, &d, buf);
                (r, start.elapsed().as_nanos() as u64)
            });
        if let Ok(handle) = handle {
            *self.read_ahead.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(ReadAhead { layer: i, handle });
        }
    }

    /// Reads the disk layers' spans front to back with direct I/O, in large
    /// pieces with several requests in flight, as fast as the device allows,
    /// and returns (bytes, seconds): the sequential read bandwidth the disk
    /// tier is bounded by. Small models are read over several passes, at
    /// least 256 MiB in all, so that one hiccup does not decide the figure.
    /// Layers without a span or without direct I/O are skipped.
    pub fn measure_disk_bandwidth(&self) -> Result<(u64, f64), ModelError> {
        const CHUNK: usize = 8 << 20;
        const AT_LEAST: u64 = 256 << 20;
        let mut buf = AlignedBytes::new(CHUNK).map_err(|e| ModelError::Format(e.to_string()))?;
        let (mut bytes, start) = (0u64, Instant::now());
        let spans: Vec<(&File, Span)> = self
            .slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Disk(DiskLayer {
                    direct: Some(f),
                    span: Some(span),
                    ..
                }) => Some((&**f, *span)),
                _ => None,
            })
            .collect();
        while !spans.is_empty() && bytes < AT_LEAST {
            for &(f, span) in &spans {
                let mut at = 0;
                while at < span.len {
                    let len = (span.len - at).min(CHUNK);
                    let part = Span {
                        start: span.start + at as u64,
                        len,
                    };
                    read_direct(f, buf.as_mut_slice(), part)
                        .map_err(|e| ModelError::Format(format!("cannot measure the disk: {e}")))?;
                    at += len;
                    bytes += len as u64;
                }
            }
        }
        Ok((bytes, start.elapsed().as_secs_f64()))
    }
}

/// Reads disk layer `i`: its span into `buf` (grown if too small) when it
/// has one, else tensor by tensor into storage of their own.
fn fetch(
    hp: &HParams,
    i: usize,
    d: &DiskLayer,
    buf: Option<AlignedBytes>,
) -> Result<Fetched, ModelError> {
    Ok(match d.span {
        Some(span) => {
            let mut buf = match buf {
                Some(b) if b.len() >= span.buffer_len() => b,
                _ => AlignedBytes::new(span.buffer_len())
                    .map_err(|e| ModelError::Format(format!("disk layer {i}: {e}")))?,
            };
            let direct = d
                .direct
                .as_ref()
                .map(|f| read_direct(f, buf.as_mut_slice(), span));
            if !matches!(direct, Some(Ok(()))) {
                // Direct I/O refused or failed: the same span through the
                // page cache (a real read error surfaces here).
                read_exact_at(&d.file, &mut buf.as_mut_slice()[..span.len], span.start)
                    .map_err(|e| ModelError::Format(format!("cannot read disk layer {i}: {e}")))?;
            }
            let buf = Arc::new(buf);
            let w = LayerWeights::load(
                hp,
                &mut BufferTensors {
                    buf: &buf,
                    start: span.start,
                    tensors: &d.tensors,
                    layer: i,
                },
            )?;
            (w, Some(buf))
        }
        None => {
            let w = LayerWeights::load(
                hp,
                &mut FileTensors {
                    file: &d.file,
                    tensors: &d.tensors,
                    layer: i,
                    experts: None,
                },
            )?;
            (w, None)
        }
    })
}

impl Drop for LayerStore {
    fn drop(&mut self) {
        for slot in std::mem::take(&mut self.slots) {
            self.release(slot);
        }
    }
}

impl LayerProvider for LayerStore {
    fn for_each_layer(
        &self,
        f: &mut dyn FnMut(usize, Block<'_>) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        if self.slots.len() != self.hp.n_layer {
            return Err(ModelError::Format(format!(
                "only {} of {} layers are loaded",
                self.slots.len(),
                self.hp.n_layer
            )));
        }
        // A pass with GPU layers allocates its activations on the device
        // (where an out-of-memory during generation shows up).
        let charged = match &self.gpu {
            Some(g) if self.slots.iter().any(|s| matches!(s, Slot::Gpu(..))) => {
                g.tier.alloc(g.activation_bytes, || "activations".into())?;
                Some(g)
            }
            _ => None,
        };
        let result = self.run_layers(f);
        if let Some(g) = charged {
            g.tier.free(g.activation_bytes);
        }
        result
    }

    fn read_ahead_layer(&self, i: usize) -> Option<&LayerWeights> {
        match self.slots.get(i) {
            Some(Slot::Experts(w)) => Some(w),
            _ => None,
        }
    }
}

impl LayerStore {
    /// Layer `i` as the model runs it, for a layer in RAM or on the GPU.
    fn resident(&self, i: usize) -> Option<Block<'_>> {
        match &self.slots[i] {
            Slot::Resident(w) | Slot::Experts(w) | Slot::Gpu(GpuLayer::Host(w), ..) => {
                Some(Block::Host(w))
            }
            Slot::Gpu(GpuLayer::Device(block), ..) => Some(Block::Device {
                block,
                rope: self.rope.as_ref()?,
            }),
            Slot::Disk(_) => None,
        }
    }

    fn run_layers(
        &self,
        f: &mut dyn FnMut(usize, Block<'_>) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        let disk: Vec<usize> = (0..self.slots.len())
            .filter(|&i| matches!(self.slots[i], Slot::Disk(_)))
            .collect();
        let no_rope = || ModelError::Format("the GPU tier has no rotary tables".into());
        if disk.is_empty() {
            for i in 0..self.slots.len() {
                f(i, self.resident(i).ok_or_else(no_rope)?)?;
            }
            return Ok(());
        }
        let n_buffers = self.read_buffers();
        let pool: Vec<AlignedBytes> =
            std::mem::take(&mut *self.buffers.lock().unwrap_or_else(|e| e.into_inner()));
        let mut pending = self
            .read_ahead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (free_tx, free_rx) = crossbeam_channel::unbounded::<AlignedBytes>();
        for b in pool {
            let _ = free_tx.send(b);
        }
        let result = std::thread::scope(|s| {
            // Owned here, so that leaving early (an error) lets a prefetcher
            // waiting for a buffer stop.
            let free_tx = free_tx;
            // The free buffers bound how far the prefetcher runs ahead.
            let (tx, rx) = crossbeam_channel::bounded::<Result<Fetched, ModelError>>(n_buffers);
            let slots = &self.slots;
            let free = free_rx.clone();
            let pending = &mut pending;
            let window = self.reads_in_flight(n_buffers);
            s.spawn(move || {
                let mut made = free.len() + usize::from(pending.is_some());
                // Reads in flight, oldest first; each is handed over in
                // layer order once done.
                let mut inflight: VecDeque<
                    std::thread::ScopedJoinHandle<'_, Result<Fetched, ModelError>>,
                > = VecDeque::new();
                // Whether to go on: the compute thread took it and it was
                // not an error.
                let send = |r: Result<Fetched, ModelError>| -> bool {
                    let failed = r.is_err();
                    tx.send(r).is_ok() && !failed
                };
                let hand_over =
                    |h: std::thread::ScopedJoinHandle<'_, Result<Fetched, ModelError>>| -> bool {
                        send(h.join().unwrap_or(Err(ModelError::PrefetchLost)))
                    };
                for i in disk {
                    let Slot::Disk(d) = &slots[i] else { continue };
                    // The read-ahead is always the first disk layer, so no
                    // read is in flight before it.
                    if let Some(ahead) = pending.take_if(|p| p.layer == i) {
                        let r = ahead.handle.join().map_or(
                            Err(ModelError::PrefetchLost),
                            |(r, nanos)| {
                                self.count_read(d, nanos);
                                r
                            },
                        );
                        if !send(r) {
                            return;
                        }
                        continue;
                    }
                    // A free buffer, a new one while fewer than allowed
                    // exist, else hand over finished reads until the compute
                    // thread gives one back.
                    let buf = loop {
                        match free.try_recv() {
                            Ok(b) => break Some(b),
                            Err(_) if made < n_buffers => {
                                made += 1;
                                break None;
                            }
                            Err(_) => match inflight.pop_front() {
                                Some(h) => {
                                    if !hand_over(h) {
                                        return;
                                    }
                                }
                                None => match free.recv() {
                                    Ok(b) => break Some(b),
                                    Err(_) => return,
                                },
                            },
                        }
                    };
                    inflight.push_back(s.spawn(move || self.read_disk_layer(i, d, buf)));
                    while inflight.len() >= window {
                        let Some(h) = inflight.pop_front() else { break };
                        if !hand_over(h) {
                            return;
                        }
                    }
                }
                while let Some(h) = inflight.pop_front() {
                    if !hand_over(h) {
                        return;
                    }
                }
            });
            for (i, slot) in self.slots.iter().enumerate() {
                match slot {
                    Slot::Resident(_) | Slot::Experts(_) | Slot::Gpu(..) => {
                        f(i, self.resident(i).ok_or_else(no_rope)?)?
                    }
                    Slot::Disk(_) => {
                        let waited = Instant::now();
                        let (w, buf) = rx.recv().map_err(|_| ModelError::PrefetchLost)??;
                        self.stats
                            .wait_nanos
                            .fetch_add(waited.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        f(i, Block::Host(&w))?;
                        drop(w);
                        // The weights are gone, so the buffer is ours again.
                        if let Some(b) = buf.and_then(|b| Arc::try_unwrap(b).ok()) {
                            let _ = free_tx.send(b);
                        }
                    }
                }
            }
            Ok(())
        });
        self.buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(free_rx.try_iter().take(n_buffers));
        if result.is_ok() {
            self.start_read_ahead();
        }
        result
    }
}
