//! A transformer block on a candle device — the GPU tier's compute.
//!
//! The weights keep their stored GGML type in device memory (candle's
//! `QMatMul`: its CUDA backend runs quantized matrix-vector kernels while
//! decoding and dequantize-then-GEMM for prompt chunks); norms, rotary
//! embedding, attention and the MLP run as candle ops on the same device.
//! Each block owns its KV cache in device memory, preallocated for the whole
//! context (the planner budgets exactly that), so nothing but the hidden
//! state crosses between devices, and only where a pass enters or leaves
//! the GPU tier.
//!
//! The same code runs on candle's CPU device, which is how it is tested on
//! machines without a GPU: its results match the host kernels' within
//! rounding (the two quantize activations differently).
//!
//! Attention never materialises scores for a whole long prompt at once:
//! queries go in chunks so that one chunk's scores stay under
//! [`SCORES_BYTES`], and grouped KV heads are handled by folding each
//! group's query heads together rather than copying keys.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use std::sync::atomic::{AtomicUsize, Ordering};

use super::hparams::{HParams, RopeStyle};
use super::kv_cache::Window;
use super::transformer::{rope_tables, to_f32_vec, BlockTensors, Ffn, TensorSource};
use super::ModelError;

/// At most this many bytes of attention scores per query chunk.
pub const SCORES_BYTES: usize = 64 << 20;

/// The rotary tables on a device, shared by its blocks.
#[derive(Debug)]
pub struct DeviceRope {
    /// `max_positions × head_dim/2`.
    cos: Tensor,
    sin: Tensor,
    /// The sliding layers' tables, when the model has them.
    local: Option<(Tensor, Tensor)>,
    style: RopeStyle,
}

impl DeviceRope {
    pub fn new(hp: &HParams, max_positions: usize, device: &Device) -> Result<Self, ModelError> {
        let (cos, sin) = rope_tables(hp, max_positions, false)?;
        let half = hp.head_dim / 2;
        let local = if hp.sliding_window > 0 {
            let (c, s) = rope_tables(hp, max_positions, true)?;
            Some((
                Tensor::from_vec(c, (max_positions, half), device)?,
                Tensor::from_vec(s, (max_positions, half), device)?,
            ))
        } else {
            None
        };
        Ok(DeviceRope {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
            local,
            style: hp.rope_style,
        })
    }

    /// Bytes the tables take on the device.
    pub fn bytes(&self) -> u64 {
        let tables = if self.local.is_some() { 4 } else { 2 };
        tables * self.cos.elem_count() as u64 * 4
    }

    /// Rotates `x` (`heads × n × head_dim`) to positions `pos..pos + n`,
    /// or by the given per-token angles (`n × head_dim/2` cosines, sines).
    fn apply(
        &self,
        x: &Tensor,
        pos: usize,
        angles: Option<(&Tensor, &Tensor)>,
        local: bool,
    ) -> Result<Tensor, ModelError> {
        let n = x.dim(1)?;
        let (tc, ts) = match (&self.local, local) {
            (Some((c, s)), true) => (c, s),
            _ => (&self.cos, &self.sin),
        };
        let (cos, sin) = match angles {
            Some((c, s)) => (c.clone(), s.clone()),
            None => (
                tc.narrow(0, pos, n)?.contiguous()?,
                ts.narrow(0, pos, n)?.contiguous()?,
            ),
        };
        let x = x.unsqueeze(0)?.contiguous()?;
        let y = match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
        };
        Ok(y.squeeze(0)?)
    }
}

/// `y = x · Wᵀ (+ b)` on the device.
#[derive(Debug)]
pub(crate) struct Projection {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Projection {
    /// `weight` (stored type, `out × in`) and an optional f32 bias, moved to
    /// `device`.
    /// `half`: a 16-bit weight stays 16-bit (candle computes it in f16)
    /// instead of being widened to f32.
    pub(crate) fn new(
        weight: QTensor,
        bias: Option<Vec<f32>>,
        device: &Device,
        half: bool,
    ) -> Result<Self, ModelError> {
        let sixteen = matches!(
            weight.dtype(),
            candle_core::quantized::GgmlDType::F16 | candle_core::quantized::GgmlDType::BF16
        );
        let weight = if half && sixteen {
            QMatMul::TensorF16(weight.dequantize_f16(&Device::Cpu)?.to_device(device)?)
        } else {
            QMatMul::from_qtensor(to_device(weight, device)?)?
        };
        let bias = match bias {
            Some(b) => {
                let n = b.len();
                Some(Tensor::from_vec(b, n, device)?)
            }
            None => None,
        };
        Ok(Projection { weight, bias })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// One transformer block's weights and KV cache on a device.
#[derive(Debug)]
pub struct DeviceBlock {
    w: BlockTensors<Tensor, Projection>,
    /// Keys and values, `n_head_kv × slots × head_dim` each, in f32 or f16
    /// (the GPU tier's storage of the configured KV types); `None` when the
    /// layer's cache is in RAM (the host cache holds it and the host runs
    /// the attention: see [`DeviceBlock::qkv`] and [`DeviceBlock::finish`]).
    cache: Option<(Tensor, Tensor)>,
    /// A sliding layer's window (its cache holds `slots` positions from
    /// `base`), as the host cache keeps it.
    window: Option<Window>,
    base: AtomicUsize,
    /// A sliding layer (its own rotary base).
    is_local: bool,
    /// The context length.
    capacity: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    rms_eps: f32,
    attn_scale: f64,
    gelu: bool,
    device: Device,
    /// At most this many bytes of attention scores per query chunk.
    scores_bytes: usize,
}

/// The device type of a KV cache stored as `t` (block types: f16).
fn device_type(t: crate::kernels::kv::CacheType) -> DType {
    match t {
        crate::kernels::kv::CacheType::F32 => DType::F32,
        _ => DType::F16,
    }
}

/// A host tensor moved to `device` in its stored type.
pub(crate) fn to_device(t: QTensor, device: &Device) -> Result<QTensor, ModelError> {
    if device.is_cpu() {
        return Ok(t);
    }
    let dims = t.shape().dims().to_vec();
    Ok(qtensor_from_ggml(t.dtype(), &t.data()?, dims, device)?)
}

impl DeviceBlock {
    /// Builds a block on `device` from its (already shape-checked) tensors,
    /// with a KV cache for `capacity` positions.
    pub fn load(
        hp: &HParams,
        layer: usize,
        src: &mut dyn TensorSource,
        device: &Device,
        capacity: usize,
        chunk: usize,
        kv_types: Option<crate::kernels::kv::KvTypes>,
    ) -> Result<Self, ModelError> {
        if hp.moe.is_some() {
            return Err(ModelError::Invalid(
                "the GPU tier does not run mixture-of-experts layers yet".into(),
            ));
        }
        let w = BlockTensors::read(
            hp,
            src,
            |src, name| {
                let v = to_f32_vec(&src.qtensor(name)?)?;
                let n = v.len();
                Ok(Tensor::from_vec(v, n, device)?)
            },
            |src, name, bias| {
                let t = to_device(src.qtensor(name)?, device)?;
                Ok(Projection {
                    weight: QMatMul::from_qtensor(t)?,
                    bias,
                })
            },
        )?;
        let window = Window::of(hp, layer, capacity, chunk);
        let mut block = DeviceBlock {
            w,
            cache: None,
            window,
            base: AtomicUsize::new(0),
            is_local: hp.is_sliding(layer),
            capacity,
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hp.head_dim,
            rms_eps: hp.rms_eps,
            attn_scale: hp
                .attn_scale
                .map_or(1.0 / (hp.head_dim as f64).sqrt(), f64::from),
            gelu: hp.gelu(),
            device: device.clone(),
            scores_bytes: SCORES_BYTES,
        };
        if let Some(types) = kv_types {
            block.make_cache(types)?;
        }
        Ok(block)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn slots(&self) -> usize {
        self.window.map_or(self.capacity, |w| w.slots)
    }

    /// Gives the block a KV cache of its own on its device, in `types` (as
    /// [`DeviceBlock::load`] with types); empty until imported into.
    pub fn make_cache(&mut self, types: crate::kernels::kv::KvTypes) -> Result<(), ModelError> {
        let shape = (self.n_head_kv, self.slots(), self.head_dim);
        self.cache = Some((
            Tensor::zeros(shape, device_type(types.k), &self.device)?,
            Tensor::zeros(shape, device_type(types.v), &self.device)?,
        ));
        self.base.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Frees the block's own KV cache: from now on the host's holds it.
    pub fn drop_cache(&mut self) {
        self.cache = None;
    }

    /// Whether the block keeps its KV cache on its device (otherwise the
    /// host's cache holds it).
    pub fn kv_on_device(&self) -> bool {
        self.cache.is_some()
    }

    fn device_cache(&self) -> Result<&(Tensor, Tensor), ModelError> {
        self.cache
            .as_ref()
            .ok_or_else(|| ModelError::Format("this GPU layer keeps its KV cache in RAM".into()))
    }

    /// Runs the block on `x` (`n × n_embd`, on this device) for positions
    /// `pos..pos + n`, writing their keys and values into the block's cache.
    pub fn forward(
        &self,
        x: &Tensor,
        pos: usize,
        rope: &DeviceRope,
        angles: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor, ModelError> {
        let (k_cache, v_cache) = self.device_cache()?;
        let (q, k, v) = self.project(x, pos, rope, angles)?;
        let n = x.dim(0)?;
        let base = self.make_room(pos, n)?;
        k_cache.slice_set(&k.to_dtype(k_cache.dtype())?.contiguous()?, 1, pos - base)?;
        v_cache.slice_set(&v.to_dtype(v_cache.dtype())?.contiguous()?, 1, pos - base)?;
        let att = self.attention(&q, pos, base)?;
        self.finish(x, &att)
    }

    /// The first half of the block for a cache in RAM: queries, keys and
    /// values of `x` at `pos..`, token major (`n × n_head·head_dim`, `n ×
    /// n_head_kv·head_dim` twice), rotary embedding applied, for the host
    /// to cache and attend with.
    pub fn qkv(
        &self,
        x: &Tensor,
        pos: usize,
        rope: &DeviceRope,
        angles: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor, Tensor), ModelError> {
        let (q, k, v) = self.project(x, pos, rope, angles)?;
        let n = x.dim(0)?;
        let rows = |t: Tensor| -> Result<Tensor, ModelError> {
            let heads = t.dim(0)?;
            Ok(t.transpose(0, 1)?
                .contiguous()?
                .reshape((n, heads * self.head_dim))?)
        };
        Ok((rows(q)?, rows(k)?, rows(v)?))
    }

    /// Queries, keys and values of `x` (`heads × n × head_dim` each), with
    /// the rotary embedding for positions `pos..`.
    fn project(
        &self,
        x: &Tensor,
        pos: usize,
        rope: &DeviceRope,
        angles: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor, Tensor), ModelError> {
        let n = x.dim(0)?;
        if pos + n > self.capacity() {
            return Err(ModelError::ContextFull {
                needed: pos + n,
                context: self.capacity(),
            });
        }
        let (nh, nkv, hd) = (self.n_head, self.n_head_kv, self.head_dim);
        let h = candle_nn::ops::rms_norm(x, &self.w.attn_norm, self.rms_eps)?;
        // heads × n × head_dim
        let heads = |t: Tensor, count: usize| -> Result<Tensor, ModelError> {
            Ok(t.reshape((n, count, hd))?.transpose(0, 1)?.contiguous()?)
        };
        let mut q = heads(self.w.wq.forward(&h)?, nh)?;
        let mut k = heads(self.w.wk.forward(&h)?, nkv)?;
        if let (Some(qn), Some(kn)) = (&self.w.q_norm, &self.w.k_norm) {
            q = candle_nn::ops::rms_norm(&q, qn, self.rms_eps)?;
            k = candle_nn::ops::rms_norm(&k, kn, self.rms_eps)?;
        }
        let local = self.is_local;
        let q = rope.apply(&q, pos, angles, local)?;
        let k = rope.apply(&k, pos, angles, local)?;
        let v = heads(self.w.wv.forward(&h)?, nkv)?;
        Ok((q, k, v))
    }

    /// The rest of the block after attention: `att` (`n × n_head·head_dim`)
    /// through the output projection into the residual stream `x`, then the
    /// feed-forward part.
    pub fn finish(&self, x: &Tensor, att: &Tensor) -> Result<Tensor, ModelError> {
        let mut o = self.w.wo.forward(att)?;
        if let Some(norm) = &self.w.post_attn_norm {
            o = candle_nn::ops::rms_norm(&o, norm, self.rms_eps)?;
        }
        let x = (x + o)?;

        let h = candle_nn::ops::rms_norm(&x, &self.w.ffn_norm, self.rms_eps)?;
        let Ffn::Dense { gate, up, down } = &self.w.ffn else {
            return Err(ModelError::Invalid(
                "the GPU tier does not run mixture-of-experts layers yet".into(),
            ));
        };
        let g = gate.forward(&h)?;
        let g = if self.gelu { g.gelu()? } else { g.silu()? };
        let mut o = down.forward(&(g * up.forward(&h)?)?)?;
        if let Some(norm) = &self.w.post_ffn_norm {
            o = candle_nn::ops::rms_norm(&o, norm, self.rms_eps)?;
        }
        Ok((&x + o)?)
    }

    /// The slot of position 0 after making room for `n` positions at `pos`:
    /// a sliding layer moves the part of its window still needed to the
    /// front when the pass would run past its buffer.
    fn make_room(&self, pos: usize, n: usize) -> Result<usize, ModelError> {
        let Some(w) = self.window else {
            return Ok(0);
        };
        let old = self.base.load(Ordering::Relaxed);
        let base = w.base_for(old, pos, n)?;
        if base != old {
            let (from, count) = (base - old, pos - base);
            let (k_cache, v_cache) = self.device_cache()?;
            for cache in [k_cache, v_cache] {
                if count > 0 {
                    let kept = cache.narrow(1, from, count)?.contiguous()?;
                    cache.slice_set(&kept, 1, 0)?;
                }
            }
            self.base.store(base, Ordering::Relaxed);
        }
        Ok(base)
    }

    /// Causal attention of `q` (`n_head × n × head_dim`, at positions
    /// `pos..`) over the cached keys (from `base` to `pos + n`, the sliding
    /// window's only for a local layer); `n × n_head·head_dim`.
    fn attention(&self, q: &Tensor, pos: usize, base: usize) -> Result<Tensor, ModelError> {
        let (nh, nkv, hd) = (self.n_head, self.n_head_kv, self.head_dim);
        let rep = nh / nkv;
        let n = q.dim(1)?;
        let len = pos + n - base;
        // The query heads of one KV group share its keys: fold them into the
        // query rows (heads are grouped consecutively).
        let q = q.reshape((nkv, rep, n, hd))?;
        // f16 storage is widened for the product (candle's matmuls take
        // one type; the scores and softmax stay in f32).
        let (k_cache, v_cache) = self.device_cache()?;
        let keys_t = k_cache.narrow(1, 0, len)?.to_dtype(DType::F32)?.t()?;
        let values = v_cache.narrow(1, 0, len)?.to_dtype(DType::F32)?;
        let scale = self.attn_scale;
        let per_query = nh * len * 4;
        let chunk = (self.scores_bytes / per_query.max(1)).clamp(1, n);
        let window = self.window.map_or(0, |w| w.window);
        let mut outs = Vec::with_capacity(n.div_ceil(chunk));
        for start in (0..n).step_by(chunk) {
            let c = chunk.min(n - start);
            let qc = q
                .narrow(2, start, c)?
                .contiguous()?
                .reshape((nkv, rep * c, hd))?;
            let scores = (qc.matmul(&keys_t)? * scale)?.reshape((nkv, rep, c, len))?;
            let scores = if pos + start + c < len + base || c > 1 || (window > 0 && len > window) {
                scores.broadcast_add(&self.causal_mask(pos + start, c, base, len, window)?)?
            } else {
                scores
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?;
            let o = probs.reshape((nkv, rep * c, len))?.matmul(&values)?;
            outs.push(o.reshape((nh, c, hd))?);
        }
        let o = Tensor::cat(&outs, 1)?;
        Ok(o.transpose(0, 1)?.contiguous()?.reshape((n, nh * hd))?)
    }

    /// `c × len`: zero where query `i` (at position `first + i`) may see key
    /// `j`, a huge negative number after it (whose exponential is exactly
    /// zero, as minus infinity's). Built on the device from two position
    /// ranges, so a long prompt uploads `c + len` numbers, not `c × len`.
    /// Keys are positions `base..base + len`; with a `window`, a query
    /// also stops seeing keys `window` or more positions behind it.
    fn causal_mask(
        &self,
        first: usize,
        c: usize,
        base: usize,
        len: usize,
        window: usize,
    ) -> Result<Tensor, ModelError> {
        let keys = Tensor::arange(base as u32, (base + len) as u32, &self.device)?.unsqueeze(0)?;
        let queries =
            Tensor::arange(first as u32, (first + c) as u32, &self.device)?.unsqueeze(1)?;
        let mut visible = keys.broadcast_le(&queries)?.to_dtype(DType::F32)?;
        if window > 0 {
            // key + window > query
            let shifted = (keys.to_dtype(DType::F32)? + window as f64)?;
            let recent = shifted
                .broadcast_gt(&queries.to_dtype(DType::F32)?)?
                .to_dtype(DType::F32)?;
            visible = (visible * recent)?;
        }
        Ok(visible.affine(1e30, -1e30)?)
    }

    /// The first `len` cached positions, token major (`len × n_head_kv·
    /// head_dim` keys, then values), as the host KV cache takes them
    /// (zeros where a sliding layer no longer holds them).
    pub fn export_kv(&self, len: usize) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let base = self.base.load(Ordering::Relaxed).min(len);
        let width = self.n_head_kv * self.head_dim;
        let rows = |t: &Tensor| -> Result<Vec<f32>, ModelError> {
            let mut out = vec![0f32; base * width];
            out.extend(
                t.narrow(1, 0, len - base)?
                    .to_dtype(DType::F32)?
                    .transpose(0, 1)?
                    .contiguous()?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
            Ok(out)
        };
        let (k_cache, v_cache) = self.device_cache()?;
        Ok((rows(k_cache)?, rows(v_cache)?))
    }

    /// Takes `len` positions (token major, as [`DeviceBlock::export_kv`]
    /// gives them); a sliding layer keeps the part it needs.
    pub fn import_kv(&self, k: &[f32], v: &[f32], len: usize) -> Result<(), ModelError> {
        let base = match self.window {
            Some(w) if len > self.slots() => w.keep_from(len),
            _ => 0,
        };
        self.base.store(base, Ordering::Relaxed);
        if len == 0 {
            return Ok(());
        }
        let (nkv, hd) = (self.n_head_kv, self.head_dim);
        let put = |cache: &Tensor, rows: &[f32]| -> Result<(), ModelError> {
            let t = Tensor::from_slice(
                &rows[base * nkv * hd..len * nkv * hd],
                (len - base, nkv, hd),
                &self.device,
            )?
            .transpose(0, 1)?
            .to_dtype(cache.dtype())?
            .contiguous()?;
            Ok(cache.slice_set(&t, 1, 0)?)
        };
        let (k_cache, v_cache) = self.device_cache()?;
        put(k_cache, k)?;
        put(v_cache, v)
    }
}

/// The final norm and output head on a device.
#[derive(Debug)]
pub struct DeviceHead {
    norm: Tensor,
    weight: QMatMul,
    rms_eps: f32,
}

impl DeviceHead {
    pub fn new(
        norm: &[f32],
        weight: &QTensor,
        rms_eps: f32,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let dims = weight.shape().dims().to_vec();
        // A copy in the stored type (candle's QTensor is not Clone).
        let weight = qtensor_from_ggml(weight.dtype(), &weight.data()?, dims, device)?;
        Ok(DeviceHead {
            norm: Tensor::from_slice(norm, norm.len(), device)?,
            weight: QMatMul::from_qtensor(weight)?,
            rms_eps,
        })
    }

    pub fn device(&self) -> &Device {
        self.norm.device()
    }

    /// Logits (`rows × vocab`) of hidden states `x` (`rows × n_embd`).
    pub fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = candle_nn::ops::rms_norm(&x.contiguous()?, &self.norm, self.rms_eps)?;
        Ok(self.weight.forward(&h)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hparams(rope_style: RopeStyle) -> HParams {
        HParams {
            rope_style,
            ..HParams::test_llama()
        }
    }

    /// Random f32 tensors of the shapes a block expects.
    struct Random(u64, HParams);

    impl TensorSource for Random {
        fn qtensor(&mut self, suffix: &str) -> Result<QTensor, ModelError> {
            let shape = LayerWeights::expected_shapes(&self.1)
                .into_iter()
                .find(|(n, _)| *n == suffix)
                .map(|(_, s)| s)
                .ok_or_else(|| ModelError::Format(suffix.into()))?;
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((self.0 >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.5
                })
                .collect();
            let t = Tensor::from_vec(v, shape, &Device::Cpu)?;
            Ok(QTensor::quantize(
                &t,
                candle_core::quantized::GgmlDType::F32,
            )?)
        }
    }

    use super::super::transformer::LayerWeights;

    /// A prompt in one pass, the same prompt split in two passes, and with
    /// attention forced into one-query chunks, all agree; and the cache
    /// moves out and back unchanged.
    #[test]
    fn chunked_and_split_passes_agree() {
        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            let hp = hparams(style);
            let dev = Device::Cpu;
            let rope = DeviceRope::new(&hp, 64, &dev).unwrap();
            let mut block = DeviceBlock::load(
                &hp,
                0,
                &mut Random(7, hp.clone()),
                &dev,
                64,
                16,
                Some(crate::kernels::kv::KvTypes::F32),
            )
            .unwrap();
            let x = Tensor::randn(0f32, 1.0, (20, 32), &dev).unwrap();
            let whole = block.forward(&x, 0, &rope, None).unwrap();
            let (k, v) = block.export_kv(20).unwrap();
            block.scores_bytes = 1;
            let chunked = block.forward(&x, 0, &rope, None).unwrap();
            let a = block
                .forward(&x.narrow(0, 0, 12).unwrap(), 0, &rope, None)
                .unwrap();
            let b = block
                .forward(&x.narrow(0, 12, 8).unwrap(), 12, &rope, None)
                .unwrap();
            let split = Tensor::cat(&[a, b], 0).unwrap();
            let diff = |p: &Tensor, q: &Tensor| -> f32 {
                (p - q)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap()
            };
            assert!(diff(&whole, &chunked) < 1e-5);
            assert!(diff(&whole, &split) < 1e-5);
            // A later position sees the earlier ones: the rows differ from a
            // pass that starts there.
            let alone = block
                .forward(&x.narrow(0, 12, 8).unwrap(), 0, &rope, None)
                .unwrap();
            assert!(diff(&alone, &whole.narrow(0, 12, 8).unwrap()) > 1e-3);
            let other = DeviceBlock::load(
                &hp,
                0,
                &mut Random(7, hp.clone()),
                &dev,
                64,
                16,
                Some(crate::kernels::kv::KvTypes::F32),
            )
            .unwrap();
            other.import_kv(&k, &v, 20).unwrap();
            assert_eq!(other.export_kv(20).unwrap(), (k, v));
            // Past the context: an error, not a panic.
            assert!(matches!(
                block.forward(&x, 50, &rope, None),
                Err(ModelError::ContextFull { .. })
            ));
        }
    }
}
