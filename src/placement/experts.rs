//! A disk-tier mixture-of-experts layer's experts: read from the model
//! file only when a token is routed to them (or predicted to be), kept in a
//! per-layer cache of the plan's size, the least recently used out first.
//!
//! Reads on demand happen on the compute path: a layer's misses are read at
//! once, each on its own thread. Reads ahead happen on a few reader threads
//! the model's caches share: once layer n has its own experts, it predicts
//! with layer n+1's router which experts that layer will use (see
//! [`crate::model::transformer`]), and they are read while layer n computes
//! and layer n+1 attends. A layer whose routed expert is still being read
//! ahead waits for that read rather than starting another. A layer stops
//! reading ahead while its predictions are mostly wrong (each wrong one
//! costs a read and a buffer), and probes now and then. Buffers of evicted
//! experts go to one pool of the model's, from which the next reads take
//! theirs.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use crate::model::linear::Linear;
use crate::model::transformer::{Expert, ExpertSource, EXPERT_GROUP};
use crate::model::ModelError;
use crate::weights::gguf::TensorInfo;
use crate::weights::read::read_exact_at;

use super::alloc::{AlignedBytes, DIRECT_ALIGN};
use super::store::{find_tensor, read_one, Span};

/// Counters of the experts read from disk, all layers together.
#[derive(Debug, Default)]
pub struct ExpertStats {
    /// Routed experts found in the cache or already being read ahead.
    pub hits: AtomicU64,
    /// Routed experts read on demand.
    pub misses: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Time the compute thread waited for expert reads (on demand or
    /// ahead), in nanoseconds.
    pub wait_nanos: AtomicU64,
    /// Experts read ahead of their layer.
    pub read_ahead: AtomicU64,
    /// Experts read ahead that a token was then routed to.
    pub read_ahead_used: AtomicU64,
}

/// [`ExpertStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpertCounts {
    pub hits: u64,
    pub misses: u64,
    pub bytes_read: u64,
    pub wait_nanos: u64,
    pub read_ahead: u64,
    pub read_ahead_used: u64,
}

impl ExpertStats {
    pub fn snapshot(&self) -> ExpertCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExpertCounts {
            hits: get(&self.hits),
            misses: get(&self.misses),
            bytes_read: get(&self.bytes_read),
            wait_nanos: get(&self.wait_nanos),
            read_ahead: get(&self.read_ahead),
            read_ahead_used: get(&self.read_ahead_used),
        }
    }
}

impl ExpertCounts {
    /// What happened between `before` and `self`.
    pub fn since(self, before: ExpertCounts) -> ExpertCounts {
        ExpertCounts {
            hits: self.hits.saturating_sub(before.hits),
            misses: self.misses.saturating_sub(before.misses),
            bytes_read: self.bytes_read.saturating_sub(before.bytes_read),
            wait_nanos: self.wait_nanos.saturating_sub(before.wait_nanos),
            read_ahead: self.read_ahead.saturating_sub(before.read_ahead),
            read_ahead_used: self.read_ahead_used.saturating_sub(before.read_ahead_used),
        }
    }

    /// Routed experts that needed no read on the compute path.
    pub fn hit_rate(&self) -> Option<f64> {
        let all = self.hits + self.misses;
        (all > 0).then(|| self.hits as f64 / all as f64)
    }

    /// Experts read ahead that were then used.
    pub fn read_ahead_accuracy(&self) -> Option<f64> {
        (self.read_ahead > 0).then(|| self.read_ahead_used as f64 / self.read_ahead as f64)
    }
}

/// Experts of one layer being read ahead or read ahead and not yet asked
/// for, at most (a decode pass's prediction is one group).
pub const READ_AHEAD_MAX: usize = EXPERT_GROUP;

/// A layer reads ahead only while at least this share of its recent reads
/// ahead were used: a wrong one costs a read that competes with the disk's
/// other reads and a buffer. Judged after [`GATE_SAMPLE`] reads ahead;
/// while paused, every [`PROBE_EVERY`]th prediction is still read, to see
/// whether the routing has become predictable.
const READ_AHEAD_MIN_ACCURACY: f64 = 0.5;
const GATE_SAMPLE: u32 = 32;
const PROBE_EVERY: u32 = 8;

/// Whether a layer whose recent reads ahead were `issued`, `used` of them,
/// reads its `prediction`th prediction ahead.
fn worth_reading_ahead(issued: u32, used: u32, prediction: u32) -> bool {
    issued < GATE_SAMPLE
        || used as f64 >= READ_AHEAD_MIN_ACCURACY * issued as f64
        || prediction.is_multiple_of(PROBE_EVERY)
}

/// Threads that read experts ahead, shared by a model's caches.
const READERS: usize = 8;

/// Buffers of evicted experts kept for the next reads: a layer's misses
/// and a layer's reads ahead.
const FREE_BUFFERS: usize = EXPERT_GROUP + READ_AHEAD_MAX;

/// Experts' buffers a model holds outside its caches at most: a group in
/// use, a layer's reads ahead, and the free pool (what the planner counts).
pub const TRANSIENT_EXPERTS: usize = EXPERT_GROUP + READ_AHEAD_MAX + FREE_BUFFERS;

type Job = Box<dyn FnOnce() + Send>;

/// What a model's expert caches share: the counters, the pool of free
/// buffers and the reader threads (started on the first read ahead).
#[derive(Debug)]
pub struct ExpertIo {
    pub stats: Arc<ExpertStats>,
    free: Mutex<Vec<AlignedBytes>>,
    read_ahead: AtomicBool,
    readers: OnceLock<Option<crossbeam_channel::Sender<Job>>>,
}

impl ExpertIo {
    pub fn new(read_ahead: bool) -> Arc<Self> {
        Arc::new(ExpertIo {
            stats: Arc::new(ExpertStats::default()),
            free: Mutex::new(Vec::new()),
            read_ahead: AtomicBool::new(read_ahead),
            readers: OnceLock::new(),
        })
    }

    /// Turns reading ahead on or off (for every cache of the model).
    pub fn set_read_ahead(&self, on: bool) {
        self.read_ahead.store(on, Ordering::Relaxed);
    }

    pub fn read_ahead(&self) -> bool {
        self.read_ahead.load(Ordering::Relaxed)
    }

    /// The reader threads' queue; `None` when reading ahead is off or no
    /// thread could be started.
    fn readers(&self) -> Option<&crossbeam_channel::Sender<Job>> {
        if !self.read_ahead() {
            return None;
        }
        self.readers
            .get_or_init(|| {
                let (tx, rx) = crossbeam_channel::unbounded::<Job>();
                let mut started = 0;
                for _ in 0..READERS {
                    let rx = rx.clone();
                    let spawned = std::thread::Builder::new()
                        .name("spillway-experts".into())
                        .spawn(move || {
                            // Ends when the last cache (holding the sender)
                            // is dropped.
                            while let Ok(job) = rx.recv() {
                                job();
                            }
                        });
                    started += usize::from(spawned.is_ok());
                }
                (started > 0).then_some(tx)
            })
            .as_ref()
    }

    fn buffer(&self, len: usize) -> Result<AlignedBytes, ModelError> {
        let reused = {
            let mut free = lock(&self.free);
            let at = free.iter().position(|b| b.len() >= len);
            at.map(|i| free.swap_remove(i))
        };
        match reused {
            Some(b) => Ok(b),
            None => AlignedBytes::new(len.max(1)).map_err(|err| {
                ModelError::Format(format!("cannot allocate an expert buffer: {err}"))
            }),
        }
    }

    fn give_back(&self, b: AlignedBytes) {
        let mut free = lock(&self.free);
        if free.len() < FREE_BUFFERS {
            free.push(b);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One expert of a layer's cache: ready, or being read ahead (`None`).
#[derive(Debug)]
struct Entry {
    w: Option<Arc<Expert>>,
    /// When it was last used (a tick of the cache).
    used: u64,
    /// Read ahead and not yet asked for.
    fresh: bool,
}

#[derive(Debug, Default)]
struct CacheState {
    map: HashMap<usize, Entry>,
    tick: u64,
    /// This layer's recent reads ahead and how many were used (halved
    /// together now and then, so they follow the conversation).
    ahead_issued: u32,
    ahead_used: u32,
    /// Predictions made (read or skipped).
    predictions: u32,
}

impl CacheState {
    fn touch(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Expert `e` for a pass routed to it: `None` when absent, `Some(None)`
    /// while it is being read ahead, else the expert (now the most
    /// recently used; a read ahead counted as used).
    fn take(&mut self, e: usize, stats: &ExpertStats) -> Option<Option<Arc<Expert>>> {
        let tick = self.touch();
        let entry = self.map.get_mut(&e)?;
        let Some(w) = entry.w.clone() else {
            return Some(None);
        };
        entry.used = tick;
        if std::mem::take(&mut entry.fresh) {
            stats.read_ahead_used.fetch_add(1, Ordering::Relaxed);
            self.ahead_used += 1;
        }
        Some(Some(w))
    }
}

/// A disk-tier mixture-of-experts layer's experts: each read when a token
/// is routed to it (its rows of the three stacked tensors) unless it was
/// read ahead, then kept in a cache of `capacity` experts.
#[derive(Debug)]
pub struct ExpertCache {
    file: Arc<File>,
    /// The same file opened for direct I/O (reads bypass the page cache,
    /// as the disk tier's layers do), when the system allows it.
    direct: Option<Arc<File>>,
    layer: usize,
    /// Experts in each stacked tensor.
    n_expert: usize,
    /// gate, up and down: the stacked tensor and one expert's bytes in it.
    parts: [(TensorInfo, u64); 3],
    capacity: usize,
    state: Mutex<CacheState>,
    /// Signalled when a read ahead lands (or fails).
    arrived: Condvar,
    io: Arc<ExpertIo>,
    me: Weak<ExpertCache>,
}

impl ExpertCache {
    pub fn new(
        file: Arc<File>,
        direct: Option<Arc<File>>,
        layer: usize,
        tensors: &[TensorInfo],
        capacity: usize,
        io: Arc<ExpertIo>,
    ) -> Result<Arc<Self>, ModelError> {
        let part = |name: &str| -> Result<(TensorInfo, u64, usize), ModelError> {
            let t = find_tensor(tensors, name, layer)?;
            let n = *t.shape.first().unwrap_or(&1);
            if n == 0 || t.size_bytes % n as u64 != 0 {
                return Err(ModelError::Format(format!(
                    "blk.{layer}.{name} does not split into whole experts"
                )));
            }
            Ok((t.clone(), t.size_bytes / n as u64, n))
        };
        let (g, u, d) = (
            part("ffn_gate_exps.weight")?,
            part("ffn_up_exps.weight")?,
            part("ffn_down_exps.weight")?,
        );
        if g.2 != u.2 || g.2 != d.2 {
            return Err(ModelError::Format(format!(
                "blk.{layer}'s expert tensors hold {}, {} and {} experts",
                g.2, u.2, d.2
            )));
        }
        let n_expert = g.2;
        Ok(Arc::new_cyclic(|me| ExpertCache {
            parts: [(g.0, g.1), (u.0, u.1), (d.0, d.1)],
            n_expert,
            file,
            direct,
            layer,
            capacity,
            state: Mutex::new(CacheState::default()),
            arrived: Condvar::new(),
            io,
            me: me.clone(),
        }))
    }

    /// Reads expert `e` from the file into one buffer holding its three
    /// projections.
    fn read(&self, e: usize) -> Result<Expert, ModelError> {
        if e >= self.n_expert {
            return Err(ModelError::Format(format!(
                "expert {e} of blk.{} does not exist ({} experts)",
                self.layer, self.n_expert
            )));
        }
        // Each projection's rows lie in whole aligned blocks of the buffer,
        // as direct I/O reads them: its blocks start at `blocks[k]`, its
        // data at `offsets[k]`.
        let mut spans = [Span { start: 0, len: 0 }; 3];
        let (mut blocks, mut offsets) = ([0usize; 3], [0usize; 3]);
        let mut total = 0usize;
        for (k, (t, bytes)) in self.parts.iter().enumerate() {
            let at = t.file_offset + e as u64 * bytes;
            let start = at / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
            spans[k] = Span {
                start,
                len: (at - start) as usize + *bytes as usize,
            };
            blocks[k] = total;
            offsets[k] = total + (at - start) as usize;
            total += spans[k].buffer_len();
        }
        let mut buf = self.io.buffer(total)?;
        for (k, (t, bytes)) in self.parts.iter().enumerate() {
            let direct = self.direct.as_ref().is_some_and(|f| {
                let slot = &mut buf.as_mut_slice()[blocks[k]..blocks[k] + spans[k].buffer_len()];
                read_one(f, slot, spans[k]).is_ok()
            });
            if !direct {
                let at = offsets[k];
                let dst = &mut buf.as_mut_slice()[at..at + *bytes as usize];
                if let Err(err) = read_exact_at(&self.file, dst, t.file_offset + e as u64 * bytes) {
                    self.io.give_back(buf);
                    return Err(ModelError::Format(format!(
                        "cannot read expert {e} of blk.{}.{}: {err}",
                        self.layer, t.name
                    )));
                }
            }
        }
        self.io
            .stats
            .bytes_read
            .fetch_add(self.parts.iter().map(|p| p.1).sum(), Ordering::Relaxed);
        let buf = Arc::new(buf);
        let linear = |k: usize| -> Result<Linear, ModelError> {
            let (t, bytes) = &self.parts[k];
            let (rows, cols) = match t.shape[..] {
                [_, rows, cols] => (rows, cols),
                _ => {
                    return Err(ModelError::Format(format!(
                        "blk.{}.{} is not a stack of matrices",
                        self.layer, t.name
                    )))
                }
            };
            Linear::shared(
                buf.clone(),
                offsets[k],
                *bytes as usize,
                t.ggml_type.to_candle(),
                (rows, cols),
                None,
            )
        };
        Ok(Expert {
            gate: linear(0)?,
            up: linear(1)?,
            down: linear(2)?,
            buf: Some(buf),
        })
    }

    /// Takes back an expert's buffer when nothing else holds the expert.
    fn recycle(&self, expert: Arc<Expert>) {
        let Ok(mut e) = Arc::try_unwrap(expert) else {
            return;
        };
        let buf = e.buf.take();
        drop(e);
        if let Some(Ok(b)) = buf.map(Arc::try_unwrap) {
            self.io.give_back(b);
        }
    }

    /// A read ahead of expert `e` landed (or failed: the entry goes, and
    /// the layer reads it on demand if routed to it).
    fn arrive(&self, e: usize, read: Result<Expert, ModelError>) {
        let mut st = lock(&self.state);
        let tick = st.touch();
        let mut unused = None;
        match (read, st.map.get_mut(&e)) {
            (Ok(w), Some(entry)) if entry.w.is_none() => {
                entry.w = Some(Arc::new(w));
                entry.used = tick;
            }
            (Ok(w), _) => unused = Some(Arc::new(w)),
            (Err(_), Some(entry)) if entry.w.is_none() => {
                st.map.remove(&e);
            }
            (Err(_), _) => {}
        }
        drop(st);
        self.arrived.notify_all();
        if let Some(w) = unused {
            self.recycle(w);
        }
    }

    /// Reads experts `ids[j]` for `j` in `which` on demand, all at once.
    fn read_now(&self, ids: &[usize], which: &[usize]) -> Vec<Result<Expert, ModelError>> {
        self.io
            .stats
            .misses
            .fetch_add(which.len() as u64, Ordering::Relaxed);
        // Several requests in flight keep a fast drive busy.
        std::thread::scope(|scope| {
            let handles: Vec<_> = which
                .iter()
                .map(|&j| scope.spawn(move || self.read(ids[j])))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(ModelError::PrefetchLost)))
                .collect()
        })
    }

    /// Keeps at most `capacity` experts that are not being read ahead or
    /// awaiting their first use; returns those evicted, least recently used
    /// first.
    fn trim(&self, st: &mut CacheState) -> Vec<Arc<Expert>> {
        let mut ready: Vec<(u64, usize)> = st
            .map
            .iter()
            .filter(|(_, en)| en.w.is_some() && !en.fresh)
            .map(|(&e, en)| (en.used, e))
            .collect();
        if ready.len() <= self.capacity {
            return Vec::new();
        }
        ready.sort_unstable();
        let over = ready.len() - self.capacity;
        ready[..over]
            .iter()
            .filter_map(|&(_, e)| st.map.remove(&e).and_then(|en| en.w))
            .collect()
    }
}

impl ExpertSource for ExpertCache {
    fn fetch(&self, ids: &[usize]) -> Result<Vec<Arc<Expert>>, ModelError> {
        let stats = &self.io.stats;
        let mut found: Vec<Option<Arc<Expert>>> = vec![None; ids.len()];
        let (mut missing, mut ahead) = (Vec::new(), Vec::new());
        {
            let mut st = lock(&self.state);
            for (j, &e) in ids.iter().enumerate() {
                match st.take(e, stats) {
                    Some(Some(w)) => found[j] = Some(w),
                    Some(None) => ahead.push(j),
                    None => missing.push(j),
                }
            }
        }
        stats
            .hits
            .fetch_add((ids.len() - missing.len()) as u64, Ordering::Relaxed);
        let waited = Instant::now();
        let mut read: Vec<(usize, Result<Expert, ModelError>)> = Vec::new();
        if !missing.is_empty() {
            read.extend(missing.iter().copied().zip(self.read_now(ids, &missing)));
        }
        if !ahead.is_empty() {
            // Experts still being read ahead: wait for those reads.
            let mut st = lock(&self.state);
            while ahead
                .iter()
                .any(|&j| st.map.get(&ids[j]).is_some_and(|en| en.w.is_none()))
            {
                st = self.arrived.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            let mut failed = Vec::new();
            for &j in &ahead {
                match st.take(ids[j], stats) {
                    Some(w) => found[j] = w,
                    None => failed.push(j),
                }
            }
            drop(st);
            if !failed.is_empty() {
                // A read ahead failed: read on demand, which reports why.
                stats.hits.fetch_sub(failed.len() as u64, Ordering::Relaxed);
                read.extend(failed.iter().copied().zip(self.read_now(ids, &failed)));
            }
        }
        if !missing.is_empty() || !ahead.is_empty() {
            stats
                .wait_nanos
                .fetch_add(waited.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        let mut st = lock(&self.state);
        let mut error = None;
        for (j, r) in read {
            match r {
                Ok(w) => {
                    let w = Arc::new(w);
                    found[j] = Some(w.clone());
                    if self.capacity > 0 {
                        let used = st.touch();
                        st.map.insert(
                            ids[j],
                            Entry {
                                w: Some(w),
                                used,
                                fresh: false,
                            },
                        );
                    }
                }
                Err(e) => error = error.or(Some(e)),
            }
        }
        // What was read ahead for this pass and not routed to is an
        // ordinary entry now, and the first to go (it must not push out
        // experts that were used).
        for entry in st.map.values_mut() {
            if entry.w.is_some() && std::mem::take(&mut entry.fresh) {
                entry.used = 0;
            }
        }
        let evicted = self.trim(&mut st);
        drop(st);
        // An expert this pass still uses comes back through `release`.
        for w in evicted {
            self.recycle(w);
        }
        if let Some(e) = error {
            self.release(found.into_iter().flatten().collect());
            return Err(e);
        }
        Ok(found.into_iter().flatten().collect())
    }

    fn release(&self, experts: Vec<Arc<Expert>>) {
        for e in experts {
            self.recycle(e);
        }
    }

    fn read_ahead(&self, ids: &[usize]) {
        let Some(readers) = self.io.readers() else {
            return;
        };
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let mut st = lock(&self.state);
        st.predictions = st.predictions.wrapping_add(1);
        if !worth_reading_ahead(st.ahead_issued, st.ahead_used, st.predictions) {
            return;
        }
        if st.ahead_issued >= 4 * GATE_SAMPLE {
            st.ahead_issued /= 2;
            st.ahead_used /= 2;
        }
        let mut pending = st
            .map
            .values()
            .filter(|en| en.w.is_none() || en.fresh)
            .count();
        for &e in ids.iter().filter(|&&e| e < self.n_expert) {
            let tick = st.touch();
            if let Some(entry) = st.map.get_mut(&e) {
                // Cached: kept from eviction until its layer runs.
                entry.used = tick;
                continue;
            }
            if pending >= READ_AHEAD_MAX {
                break;
            }
            st.map.insert(
                e,
                Entry {
                    w: None,
                    used: tick,
                    fresh: true,
                },
            );
            let me = me.clone();
            let job: Job = Box::new(move || {
                // A read that panicked still arrives (as an error), so the
                // layer waiting for it reads on demand instead of hanging.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| me.read(e)))
                    .unwrap_or(Err(ModelError::PrefetchLost));
                me.arrive(e, r);
            });
            if readers.send(job).is_err() {
                st.map.remove(&e);
                break;
            }
            pending += 1;
            st.ahead_issued += 1;
            self.io.stats.read_ahead.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::GgmlType;
    use std::io::Write;

    /// A file of three stacked f32 tensors of 4 experts, each 2 × 32.
    fn cache(capacity: usize, io: Arc<ExpertIo>) -> (tempfile::NamedTempFile, Arc<ExpertCache>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let values: Vec<u8> = (0..3 * 4 * 64)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        f.write_all(&values).unwrap();
        let part = |k: u64, name: &str| TensorInfo {
            name: name.into(),
            shape: vec![4, 2, 32],
            ggml_type: GgmlType::F32,
            file_offset: k * 1024,
            size_bytes: 1024,
        };
        let tensors = [
            part(0, "ffn_gate_exps.weight"),
            part(1, "ffn_up_exps.weight"),
            part(2, "ffn_down_exps.weight"),
        ];
        let file = Arc::new(File::open(f.path()).unwrap());
        let c = ExpertCache::new(file, None, 0, &tensors, capacity, io).unwrap();
        (f, c)
    }

    /// An expert read ahead and then routed to is a hit that cost one
    /// read; one read ahead and not routed to costs a read and is evicted
    /// first; with reading ahead off nothing is read before it is asked for.
    #[test]
    fn reads_ahead_are_used_once_and_wrong_ones_go_first() {
        let io = ExpertIo::new(true);
        let (_f, c) = cache(1, io.clone());
        c.read_ahead(&[2]);
        let got = c.fetch(&[2]).unwrap();
        assert_eq!(got.len(), 1);
        c.release(got);
        let x = io.stats.snapshot();
        assert_eq!(
            (x.hits, x.misses, x.read_ahead, x.read_ahead_used),
            (1, 0, 1, 1)
        );
        assert_eq!(x.bytes_read, 3 * 256);
        // A wrong prediction: 3 is read ahead, 1 is routed; the cache (of
        // one) keeps 1, the unused 3 goes, 2 (older) too.
        c.read_ahead(&[3]);
        while lock(&c.state).map.get(&3).is_some_and(|e| e.w.is_none()) {
            std::thread::yield_now();
        }
        c.release(c.fetch(&[1]).unwrap());
        let x = io.stats.snapshot();
        assert_eq!((x.misses, x.read_ahead, x.read_ahead_used), (1, 2, 1));
        let kept: Vec<usize> = lock(&c.state).map.keys().copied().collect();
        assert_eq!(kept, vec![1]);
        io.set_read_ahead(false);
        c.read_ahead(&[0]);
        assert_eq!(io.stats.snapshot().read_ahead, 2);
        // Every buffer came back to the pool.
        assert!(lock(&io.free).len() >= 2);
    }

    /// Reading ahead pauses once most recent reads ahead went unused, and
    /// still probes every 8th prediction.
    #[test]
    fn reading_ahead_pauses_while_predictions_are_wrong() {
        assert!(worth_reading_ahead(GATE_SAMPLE - 1, 0, 1));
        assert!(worth_reading_ahead(GATE_SAMPLE, GATE_SAMPLE / 2, 1));
        assert!(!worth_reading_ahead(GATE_SAMPLE, GATE_SAMPLE / 2 - 1, 1));
        let probes = (1..=64)
            .filter(|&p| worth_reading_ahead(GATE_SAMPLE, 0, p))
            .count();
        assert_eq!(probes, 64 / PROBE_EVERY as usize);
    }
}
