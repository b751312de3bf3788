//! The key/value cache: one preallocated f32 buffer per layer for keys and
//! one for values, laid out `[kv head][position][head_dim]` so attention
//! reads each head's keys contiguously, in place, never copied.
//!
//! Buffers are allocated zeroed for the whole context at a layer's first
//! use; the operating system backs such pages lazily, so resident memory
//! grows with the tokens actually cached, not with the context length.

use super::ModelError;

#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    n_head_kv: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
}

/// One layer's keys and values, read-only.
#[derive(Clone, Copy)]
pub struct LayerKv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub capacity: usize,
    pub head_dim: usize,
}

impl LayerKv<'_> {
    /// Offset of `(kv head, position)` in `k` and `v`.
    #[inline]
    pub fn at(&self, head: usize, pos: usize) -> usize {
        (head * self.capacity + pos) * self.head_dim
    }
}

impl KvCache {
    pub fn new(n_layer: usize, n_head_kv: usize, head_dim: usize, capacity: usize) -> Self {
        KvCache {
            layers: (0..n_layer).map(|_| None).collect(),
            n_head_kv,
            head_dim,
            capacity,
            len: 0,
        }
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

    /// Bytes the cache takes once every layer is in use and full.
    pub fn full_bytes(&self) -> usize {
        self.layers.len() * 2 * self.n_head_kv * self.capacity * self.head_dim * 4
    }

    /// Forgets everything after the first `len` tokens (a shared prefix kept
    /// across turns, or a rollback after a cancelled step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
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
        let (kvh, hd, cap) = (self.n_head_kv, self.head_dim, self.capacity);
        if pos + n > cap {
            return Err(ModelError::ContextFull {
                needed: pos + n,
                context: cap,
            });
        }
        let width = kvh * hd;
        if k.len() < n * width || v.len() < n * width {
            return Err(ModelError::Format("key/value rows are too short".into()));
        }
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| ModelError::Format(format!("no KV slot for layer {layer}")))?;
        if slot.is_none() {
            let size = kvh * cap * hd;
            *slot = Some((zeroed(size)?, zeroed(size)?));
        }
        let Some((kc, vc)) = slot.as_mut() else {
            unreachable!("slot filled above")
        };
        for t in 0..n {
            for h in 0..kvh {
                let dst = (h * cap + pos + t) * hd;
                let src = t * width + h * hd;
                kc[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                vc[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
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
    }

    /// The first `len` positions of `layer`, token major (`len × n_head_kv·
    /// head_dim` keys, then values), as [`KvCache::write`] takes them; `None`
    /// when the layer has no buffers.
    pub fn rows(&self, layer: usize, len: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        let Some(Some((k, v))) = self.layers.get(layer) else {
            return None;
        };
        let (kvh, hd, cap) = (self.n_head_kv, self.head_dim, self.capacity);
        let len = len.min(cap);
        let gather = |src: &[f32]| -> Vec<f32> {
            let mut out = Vec::with_capacity(len * kvh * hd);
            for t in 0..len {
                for h in 0..kvh {
                    let at = (h * cap + t) * hd;
                    out.extend_from_slice(&src[at..at + hd]);
                }
            }
            out
        };
        Some((gather(k), gather(v)))
    }

    /// The cached keys and values of `layer`.
    pub fn layer(&self, layer: usize) -> Result<LayerKv<'_>, ModelError> {
        match self.layers.get(layer) {
            Some(Some((k, v))) => Ok(LayerKv {
                k,
                v,
                capacity: self.capacity,
                head_dim: self.head_dim,
            }),
            _ => Err(ModelError::Format(format!(
                "layer {layer} has no KV cache yet"
            ))),
        }
    }
}

/// A zeroed f32 buffer whose pages the system provides on first touch; an
/// allocation failure is an error, not an abort.
fn zeroed(n: usize) -> Result<Vec<f32>, ModelError> {
    crate::placement::alloc::zeroed_vec::<f32>(n)
        .map_err(|e| ModelError::Format(format!("cannot allocate the KV cache: {e}")))
}
