//! The key/value cache: one preallocated buffer per layer, written in place.
//!
//! Buffers are allocated zeroed for the whole context at first use; the
//! operating system backs such pages lazily, so resident memory grows with
//! the tokens actually cached, not with the context length. Attention reads
//! a narrowed view of the buffer, so no token copies the cache.

use candle_core::{DType, Device, Result, Tensor};

#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    n_head_kv: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
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

    /// Forgets everything after the first `len` tokens (a shared prefix kept
    /// across turns, or a rollback after a cancelled step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Marks `len` tokens as cached once every layer has written them.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity);
    }

    /// Writes `k`, `v` (`(1, n_head_kv, n, head_dim)`) at token `pos` of
    /// `layer` and returns views of the keys and values `0..pos + n`.
    pub fn append(
        &mut self,
        layer: usize,
        pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        if pos + n > self.capacity {
            candle_core::bail!("KV cache full: {} + {n} > {}", pos, self.capacity)
        }
        let (n_head_kv, head_dim, capacity) = (self.n_head_kv, self.head_dim, self.capacity);
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| candle_core::Error::Msg(format!("no KV slot for layer {layer}")))?;
        if slot.is_none() {
            let shape = (1, n_head_kv, capacity, head_dim);
            *slot = Some((
                Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
                Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
            ));
        }
        let Some((kc, vc)) = slot.as_ref() else {
            unreachable!("slot filled above")
        };
        kc.slice_set(&k.contiguous()?, 2, pos)?;
        vc.slice_set(&v.contiguous()?, 2, pos)?;
        Ok((kc.narrow(2, 0, pos + n)?, vc.narrow(2, 0, pos + n)?))
    }
}
