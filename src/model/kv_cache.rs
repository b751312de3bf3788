//! The key/value cache: one preallocated buffer per layer for keys and one
//! for values, laid out `[kv head][slot][row]` so attention reads each
//! head's keys contiguously, in place, never copied. Keys and values are
//! each stored in their own [`CacheType`] (f32, f16, q8_0, q4_0: a row is a
//! head's `head_dim` values, quantized in 32-value blocks), which attention
//! decodes in registers as it reads. Block-type keys and values are stored
//! rotated (`KvTypes::k_rotation`/`v_rotation`): attention rotates the
//! queries and its output to match, and [`KvCache::rows`] gives them back
//! unrotated.
//!
//! Buffers are allocated zeroed at a layer's first use; the operating
//! system backs such pages lazily, so resident memory grows with the tokens
//! actually cached, not with the context length.
//!
//! A sliding-window layer (Gemma 3's local layers) keeps only the positions
//! its queries can still see: its buffer holds [`Window::slots`] positions
//! starting at `base`. When a pass would run past the end, the last
//! `window - 1 + chunk` positions move to the front (one copy per prompt
//! chunk of tokens, never per token) — the window for the next queries and
//! a chunk of history to roll back into.

use super::hparams::HParams;
use super::ModelError;
use crate::kernels::kv::{hadamard, CacheType, KvTypes, Rows};

/// The positions a sliding layer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Keys a query sees (itself included).
    pub window: usize,
    /// Positions the buffer holds.
    pub slots: usize,
    /// Tokens a pass runs at most (the engine's prompt chunk).
    pub chunk: usize,
}

impl Window {
    /// Layer `layer`'s window at a `context`-token context, `None` when
    /// the layer keeps every position (or the context fits its buffer).
    pub fn of(hp: &HParams, layer: usize, context: usize, chunk: usize) -> Option<Self> {
        let slots = hp.kv_positions(layer, context, chunk);
        (hp.is_sliding(layer) && slots < context).then_some(Window {
            window: hp.sliding_window,
            slots,
            chunk,
        })
    }

    /// The first position kept once `len` positions are cached and a
    /// compaction happens: the window and a chunk before the next one.
    pub fn keep_from(&self, len: usize) -> usize {
        len.saturating_sub(self.window - 1 + self.chunk)
    }

    /// Where the buffer must start for a pass of `n` tokens at `pos` when it
    /// starts at `base` now: `base` if they fit, else a later start.
    pub fn base_for(&self, base: usize, pos: usize, n: usize) -> Result<usize, ModelError> {
        if pos < base {
            return Err(ModelError::Format(format!(
                "position {pos} was dropped from the sliding window (it starts at {base})"
            )));
        }
        if pos + n - base <= self.slots {
            return Ok(base);
        }
        let new = self.keep_from(pos).max(pos + n - self.slots.min(pos + n));
        if pos + n - new > self.slots || new > pos.saturating_sub(self.window - 1) {
            return Err(ModelError::Format(format!(
                "a pass of {n} tokens does not fit a sliding window of {} positions",
                self.slots
            )));
        }
        Ok(new)
    }

    /// Whether the positions a query at `len` needs are still held when
    /// the buffer starts at `base`.
    pub fn serves(&self, base: usize, len: usize) -> bool {
        base <= len.saturating_sub(self.window - 1)
    }
}

#[derive(Debug)]
pub struct KvCache {
    /// Per layer: key and value bytes (in `f32` vectors: 4-byte aligned).
    layers: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    k_type: CacheType,
    v_type: CacheType,
    /// Per layer: the sliding window, if it keeps only that.
    windows: Vec<Option<Window>>,
    /// Per layer: the position of slot 0.
    base: Vec<usize>,
    n_head_kv: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
}

/// One layer's keys and values, read-only.
#[derive(Clone, Copy)]
pub struct LayerKv<'a> {
    pub k: &'a [u8],
    pub v: &'a [u8],
    pub k_type: CacheType,
    pub v_type: CacheType,
    /// Slots per head.
    pub capacity: usize,
    pub head_dim: usize,
    /// The position of slot 0.
    pub base: usize,
    /// A query sees this many keys at most (its own included); 0: all.
    pub window: usize,
}

impl<'a> LayerKv<'a> {
    /// Row of `(kv head, position)` in `k` and `v`; `pos` is at least
    /// `base` (the cache holds nothing before).
    #[inline]
    pub fn at(&self, head: usize, pos: usize) -> usize {
        head * self.capacity + pos - self.base
    }

    /// Head `head`'s keys and values for positions `first..first + len`.
    #[inline]
    pub fn rows(&self, head: usize, first: usize, len: usize) -> (Rows<'a>, Rows<'a>) {
        let r = self.at(head, first);
        let (kb, vb) = (
            self.k_type.row_bytes(self.head_dim),
            self.v_type.row_bytes(self.head_dim),
        );
        (
            Rows {
                ty: self.k_type,
                bytes: &self.k[r * kb..(r + len) * kb],
                hd: self.head_dim,
            },
            Rows {
                ty: self.v_type,
                bytes: &self.v[r * vb..(r + len) * vb],
                hd: self.head_dim,
            },
        )
    }

    /// The first position a query at `pos` attends to.
    #[inline]
    pub fn first_seen(&self, pos: usize) -> usize {
        if self.window == 0 {
            0
        } else {
            (pos + 1).saturating_sub(self.window)
        }
    }
}

impl KvCache {
    /// An f32 cache of `capacity` positions in every layer.
    pub fn new(n_layer: usize, n_head_kv: usize, head_dim: usize, capacity: usize) -> Self {
        KvCache {
            layers: (0..n_layer).map(|_| None).collect(),
            k_type: CacheType::F32,
            v_type: CacheType::F32,
            windows: vec![None; n_layer],
            base: vec![0; n_layer],
            n_head_kv,
            head_dim,
            capacity,
            len: 0,
        }
    }

    /// The cache of a model at a `capacity`-token context whose passes run
    /// `chunk` tokens at most: sliding layers keep their window only.
    pub fn for_model(
        hp: &HParams,
        capacity: usize,
        chunk: usize,
        types: KvTypes,
    ) -> Result<Self, ModelError> {
        let mut c = Self::new(hp.n_layer, hp.n_head_kv, hp.head_dim, capacity);
        c.set_types(types)?;
        c.windows = (0..hp.n_layer)
            .map(|i| Window::of(hp, i, capacity, chunk))
            .collect();
        Ok(c)
    }

    /// Stores keys and values in these types from now on; what is cached
    /// is kept (re-encoded).
    pub fn set_types(&mut self, types: KvTypes) -> Result<(), ModelError> {
        types.check(self.head_dim).map_err(ModelError::Invalid)?;
        let (k, v) = (types.k, types.v);
        if (k, v) == (self.k_type, self.v_type) {
            return Ok(());
        }
        let len = self.len;
        let kept: Vec<_> = (0..self.layers.len()).map(|i| self.rows(i, len)).collect();
        (self.k_type, self.v_type) = (k, v);
        for (i, rows) in kept.into_iter().enumerate() {
            self.release(i);
            if let Some((k, v)) = rows {
                self.import(i, len, &k, &v)?;
            }
        }
        Ok(())
    }

    /// The key and value storage types.
    pub fn types(&self) -> KvTypes {
        KvTypes::new(self.k_type, self.v_type)
    }

    /// Tokens whose keys and values are cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn slots(&self, layer: usize) -> usize {
        self.windows[layer].map_or(self.capacity, |w| w.slots)
    }

    /// Bytes of a row of keys and of values.
    fn row_bytes(&self) -> (usize, usize) {
        (
            self.k_type.row_bytes(self.head_dim),
            self.v_type.row_bytes(self.head_dim),
        )
    }

    /// Bytes the cache takes once every layer is in use and full.
    pub fn full_bytes(&self) -> usize {
        let (kb, vb) = self.row_bytes();
        (0..self.layers.len())
            .map(|i| self.n_head_kv * self.slots(i) * (kb + vb))
            .sum()
    }

    /// Forgets everything after the first `len` tokens (a shared prefix kept
    /// across turns, or a rollback after a cancelled step). When a sliding
    /// layer no longer holds what the next query would see, nothing is
    /// kept: [`KvCache::len`] says what was.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let lost = self
            .windows
            .iter()
            .zip(&self.base)
            .any(|(w, &b)| w.is_some_and(|w| !w.serves(b, self.len)));
        if lost || self.len == 0 {
            self.len = 0;
            self.base.iter_mut().for_each(|b| *b = 0);
        }
    }

    /// Marks `len` tokens as cached once every layer has written them.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity);
    }

    /// Writes `n` tokens' keys and values (`n × n_head_kv·head_dim`, token
    /// major, as the projections produce them) at `pos` of `layer`.
    pub fn write(
        &mut self,
        layer: usize,
        pos: usize,
        n: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), ModelError> {
        let (kvh, hd) = (self.n_head_kv, self.head_dim);
        if pos + n > self.capacity {
            return Err(ModelError::ContextFull {
                needed: pos + n,
                context: self.capacity,
            });
        }
        let width = kvh * hd;
        if k.len() < n * width || v.len() < n * width {
            return Err(ModelError::Format("key/value rows are too short".into()));
        }
        if layer >= self.layers.len() {
            return Err(ModelError::Format(format!("no KV slot for layer {layer}")));
        }
        let cap = self.slots(layer);
        let old_base = self.base[layer];
        let base = match self.windows[layer] {
            Some(w) => w.base_for(old_base, pos, n)?,
            None => 0,
        };
        let (kb, vb) = self.row_bytes();
        let (kt, vt) = (self.k_type, self.v_type);
        let slot = &mut self.layers[layer];
        if slot.is_none() {
            *slot = Some((
                zeroed((kvh * cap * kb).div_ceil(4))?,
                zeroed((kvh * cap * vb).div_ceil(4))?,
            ));
        }
        let Some((kc, vc)) = slot.as_mut() else {
            unreachable!("slot filled above")
        };
        let (kc, vc) = (bytes_mut(kc), bytes_mut(vc));
        if base != old_base {
            // Keep positions base..pos, moved to the front.
            let (from, count) = (base - old_base, pos - base);
            for h in 0..kvh {
                kc.copy_within(
                    (h * cap + from) * kb..(h * cap + from + count) * kb,
                    h * cap * kb,
                );
                vc.copy_within(
                    (h * cap + from) * vb..(h * cap + from + count) * vb,
                    h * cap * vb,
                );
            }
            self.base[layer] = base;
        }
        let types = KvTypes::new(kt, vt);
        let (krot, vrot) = (types.k_rotation(hd), types.v_rotation(hd));
        let mut stack = [0f32; 512];
        let mut heap = Vec::new();
        let tmp: &mut [f32] = if hd <= stack.len() {
            &mut stack[..hd]
        } else {
            heap.resize(hd, 0.0);
            &mut heap
        };
        let mut put = |ty: CacheType, rot: Option<usize>, x: &[f32], dst: &mut [u8]| match rot {
            Some(b) => {
                tmp.copy_from_slice(x);
                hadamard(tmp, b);
                ty.encode(tmp, dst);
            }
            None => ty.encode(x, dst),
        };
        for t in 0..n {
            for h in 0..kvh {
                let row = h * cap + pos - base + t;
                let src = t * width + h * hd;
                put(
                    kt,
                    krot,
                    &k[src..src + hd],
                    &mut kc[row * kb..(row + 1) * kb],
                );
                put(
                    vt,
                    vrot,
                    &v[src..src + hd],
                    &mut vc[row * vb..(row + 1) * vb],
                );
            }
        }
        Ok(())
    }

    /// Frees `layer`'s buffers (its keys and values now live elsewhere,
    /// e.g. on the GPU).
    pub fn release(&mut self, layer: usize) {
        if let Some(slot) = self.layers.get_mut(layer) {
            *slot = None;
        }
        if let Some(b) = self.base.get_mut(layer) {
            *b = 0;
        }
    }

    /// The first `len` positions of `layer`, token major (`len × n_head_kv·
    /// head_dim` keys, then values), as [`KvCache::import`] takes them
    /// (positions a sliding layer no longer holds are zeros); `None` when
    /// the layer has no buffers.
    pub fn rows(&self, layer: usize, len: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        let Some(Some((k, v))) = self.layers.get(layer) else {
            return None;
        };
        let (kvh, hd, cap, base) = (
            self.n_head_kv,
            self.head_dim,
            self.slots(layer),
            self.base[layer],
        );
        let len = len.min(base + cap);
        let types = self.types();
        let gather = |src: &[f32], ty: CacheType, rot: Option<usize>| -> Vec<f32> {
            let (src, rb) = (bytes(src), ty.row_bytes(hd));
            let mut out = vec![0f32; len * kvh * hd];
            for t in base..len {
                for h in 0..kvh {
                    let at = (h * cap + t - base) * rb;
                    let to = (t * kvh + h) * hd;
                    ty.decode(&src[at..at + rb], &mut out[to..to + hd]);
                    if let Some(b) = rot {
                        hadamard(&mut out[to..to + hd], b);
                    }
                }
            }
            out
        };
        Some((
            gather(k, self.k_type, types.k_rotation(hd)),
            gather(v, self.v_type, types.v_rotation(hd)),
        ))
    }

    /// Takes `len` positions of `layer` (token major, as [`KvCache::rows`]
    /// gives them); a sliding layer keeps the part it needs.
    pub fn import(
        &mut self,
        layer: usize,
        len: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), ModelError> {
        let from = match self.windows.get(layer).copied().flatten() {
            Some(w) if len > w.slots => w.keep_from(len),
            _ => 0,
        };
        let width = self.n_head_kv * self.head_dim;
        if k.len() < len * width || v.len() < len * width {
            return Err(ModelError::Format("key/value rows are too short".into()));
        }
        self.release(layer);
        self.base[layer] = from;
        self.write(
            layer,
            from,
            len - from,
            &k[from * width..len * width],
            &v[from * width..len * width],
        )
    }

    /// The cached keys and values of `layer`.
    pub fn layer(&self, layer: usize) -> Result<LayerKv<'_>, ModelError> {
        match self.layers.get(layer) {
            Some(Some((k, v))) => Ok(LayerKv {
                k: bytes(k),
                v: bytes(v),
                k_type: self.k_type,
                v_type: self.v_type,
                capacity: self.slots(layer),
                head_dim: self.head_dim,
                base: self.base[layer],
                window: self.windows[layer].map_or(0, |w| w.window),
            }),
            _ => Err(ModelError::Format(format!(
                "layer {layer} has no KV cache yet"
            ))),
        }
    }
}

/// A buffer's bytes.
fn bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 storage is valid bytes; the length is in bounds.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: as above; any bytes written make valid f32 storage.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// A zeroed f32 buffer whose pages the system provides on first touch; an
/// allocation failure is an error, not an abort.
fn zeroed(n: usize) -> Result<Vec<f32>, ModelError> {
    crate::placement::alloc::zeroed_vec::<f32>(n)
        .map_err(|e| ModelError::Format(format!("cannot allocate the KV cache: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sliding layer of window 4 with 2-token passes keeps 8 slots; after
    /// 40 tokens in passes of 1 and 2 it still serves every query's window,
    /// and the positions it reports are those written.
    #[test]
    fn sliding_layer_keeps_the_window_through_compactions() {
        let w = Window {
            window: 4,
            slots: 8,
            chunk: 2,
        };
        let mut c = KvCache::new(1, 1, 2, 64);
        c.windows[0] = Some(w);
        let mut pos = 0;
        while pos < 40 {
            let n = if pos % 3 == 0 { 2 } else { 1 };
            let k: Vec<f32> = (pos..pos + n).flat_map(|p| [p as f32, 0.5]).collect();
            c.write(0, pos, n, &k, &k).unwrap();
            pos += n;
            c.set_len(pos);
            let l = c.layer(0).unwrap();
            for q in pos - n..pos {
                for p in l.first_seen(q)..=q {
                    let (k, _) = l.rows(0, p, 1);
                    let mut x = [0f32; 2];
                    k.ty.decode(k.bytes, &mut x);
                    assert_eq!(x[0], p as f32, "query {q} key {p}");
                }
            }
        }
        assert_eq!(c.full_bytes(), 2 * 8 * 2 * 4);
        // A rollback inside the kept history keeps the cache ...
        c.truncate(pos - 1);
        assert_eq!(c.len(), pos - 1);
        // ... one past it forgets everything.
        c.truncate(pos - 9);
        assert_eq!(c.len(), 0);
        // Rows round-trip through import.
        let k: Vec<f32> = (0..20).flat_map(|p| [p as f32, 1.0]).collect();
        c.import(0, 20, &k, &k).unwrap();
        let (rk, _) = c.rows(0, 20).unwrap();
        assert_eq!(&rk[2 * 15..], &k[2 * 15..]);
        // A pass larger than the buffer can hold is an error, not a panic.
        assert!(c.write(0, 20, 9, &[0.0; 18], &[0.0; 18]).is_err());
    }

    /// Block-type rows are stored rotated and come back unrotated from
    /// `rows` (what the GPU tier imports), within the type's step; changing
    /// the types re-encodes what is cached.
    #[test]
    fn quantized_rows_come_back_unrotated() {
        let x: Vec<f32> = (0..3 * 128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        for types in [
            KvTypes::new(CacheType::Q8_0, CacheType::Q8_0),
            KvTypes::new(CacheType::Q4_0, CacheType::F16),
            KvTypes::F32,
        ] {
            let mut c = KvCache::new(1, 2, 64, 16);
            c.write(0, 0, 3, &x, &x).unwrap();
            c.set_len(3);
            c.set_types(types).unwrap();
            let (k, v) = c.rows(0, 3).unwrap();
            let tol = |t: CacheType| match t {
                CacheType::Q4_0 => 0.6,
                CacheType::Q8_0 => 0.05,
                _ => 0.0,
            };
            for (a, b) in x.iter().zip(&k) {
                assert!((a - b).abs() <= tol(types.k) + 0.06, "{types}: {a} vs {b}");
            }
            for (a, b) in x.iter().zip(&v) {
                assert!((a - b).abs() <= tol(types.v) + 0.06, "{types}: {a} vs {b}");
            }
        }
    }
}
