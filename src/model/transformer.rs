//! The decoder-only transformer shared by the llama family and Qwen2:
//! RMSNorm, rotary attention with grouped KV heads, SwiGLU MLP.
//!
//! The model is plain structs mirroring the GGUF tensor names, with
//! `forward`. It never reads files and never decides where a layer lives: it
//! asks a [`LayerProvider`] to hand it each layer in turn, which is how RAM
//! and disk layers (and later VRAM ones) run through the same code and give
//! bit-identical results.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use super::hparams::{HParams, RopeStyle};
use super::kv_cache::KvCache;
use super::linear::Linear;
use super::ModelError;

/// One transformer block's weights.
#[derive(Debug)]
pub struct LayerWeights {
    pub attn_norm: Tensor,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub ffn_norm: Tensor,
    pub w_gate: Linear,
    pub w_up: Linear,
    pub w_down: Linear,
}

/// Where a layer's named tensors come from while it is being built.
pub trait TensorSource {
    fn qtensor(&mut self, suffix: &str) -> Result<QTensor, ModelError>;
}

impl LayerWeights {
    /// The shape every block tensor must have, checked once per model from
    /// the tensor table before any layer is read (see the tier store).
    pub fn expected_shapes(hp: &HParams) -> Vec<(&'static str, Vec<usize>)> {
        let (d, hd, ff) = (hp.n_embd, hp.head_dim, hp.n_ff);
        let (q, kv) = (hp.n_head * hd, hp.n_head_kv * hd);
        let mut v = vec![
            ("attn_norm.weight", vec![d]),
            ("attn_q.weight", vec![q, d]),
            ("attn_k.weight", vec![kv, d]),
            ("attn_v.weight", vec![kv, d]),
            ("attn_output.weight", vec![d, q]),
            ("ffn_norm.weight", vec![d]),
            ("ffn_gate.weight", vec![ff, d]),
            ("ffn_up.weight", vec![ff, d]),
            ("ffn_down.weight", vec![d, ff]),
        ];
        if hp.has_qkv_bias {
            v.extend([
                ("attn_q.bias", vec![q]),
                ("attn_k.bias", vec![kv]),
                ("attn_v.bias", vec![kv]),
            ]);
        }
        v
    }

    /// Builds a block from its (already shape-checked) tensors.
    pub fn load(hp: &HParams, src: &mut dyn TensorSource) -> Result<Self, ModelError> {
        let mut vector = |name: &str| -> Result<Tensor, ModelError> {
            Ok(src.qtensor(name)?.dequantize(&Device::Cpu)?)
        };
        let (bq, bk, bv) = if hp.has_qkv_bias {
            (
                Some(vector("attn_q.bias")?),
                Some(vector("attn_k.bias")?),
                Some(vector("attn_v.bias")?),
            )
        } else {
            (None, None, None)
        };
        let attn_norm = vector("attn_norm.weight")?;
        let ffn_norm = vector("ffn_norm.weight")?;
        let mut matrix = |name: &str, bias: Option<Tensor>| -> Result<Linear, ModelError> {
            Ok(Linear::new(Arc::new(src.qtensor(name)?), bias)?)
        };
        Ok(LayerWeights {
            attn_norm,
            wq: matrix("attn_q.weight", bq)?,
            wk: matrix("attn_k.weight", bk)?,
            wv: matrix("attn_v.weight", bv)?,
            wo: matrix("attn_output.weight", None)?,
            ffn_norm,
            w_gate: matrix("ffn_gate.weight", None)?,
            w_up: matrix("ffn_up.weight", None)?,
            w_down: matrix("ffn_down.weight", None)?,
        })
    }
}

/// Hands the transformer its layers in order. Implemented by the tier store,
/// which may fetch a layer from disk just before it is needed.
pub trait LayerProvider {
    /// Calls `f(i, layer)` for every layer `i` in order; stops at the first
    /// error.
    fn for_each_layer(
        &self,
        f: &mut dyn FnMut(usize, &LayerWeights) -> Result<(), ModelError>,
    ) -> Result<(), ModelError>;
}

/// Which positions need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// The last position only (generation).
    Last,
    /// Every position (perplexity, parity checks).
    All,
}

/// Everything outside the blocks: embeddings, final norm, output head, and the
/// rotary tables.
pub struct Transformer {
    pub hp: HParams,
    token_embd: Arc<QTensor>,
    output_norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
}

impl Transformer {
    /// `max_positions` bounds the rotary tables (the context length in use).
    pub fn new(
        hp: HParams,
        token_embd: QTensor,
        output_norm: Tensor,
        output: Option<QTensor>,
        max_positions: usize,
    ) -> Result<Self, ModelError> {
        let token_embd = Arc::new(token_embd);
        let output = match output {
            Some(w) => Linear::new(Arc::new(w), None)?,
            None => Linear::new(token_embd.clone(), None)?,
        };
        if output.in_features() != hp.n_embd || output.out_features() != hp.n_vocab {
            return Err(ModelError::Format(format!(
                "output head is {}x{}, expected {}x{}",
                output.out_features(),
                output.in_features(),
                hp.n_vocab,
                hp.n_embd
            )));
        }
        if output_norm.dims() != [hp.n_embd] {
            return Err(ModelError::Format(
                "output_norm.weight has the wrong shape".into(),
            ));
        }
        let half = hp.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / hp.rope_freq_base.powf(2.0 * i as f32 / hp.head_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), &Device::Cpu)?;
        let positions = Tensor::arange(0u32, max_positions as u32, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let freqs = positions.broadcast_mul(&inv_freq)?;
        Ok(Transformer {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
            hp,
            token_embd,
            output_norm,
            output,
        })
    }

    /// The last row of a logits tensor `(n, vocab)`.
    pub fn last_row(logits: &Tensor) -> Result<Vec<f32>, ModelError> {
        let n = logits.dim(0)?;
        Ok(logits.get(n - 1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Runs `tokens` at positions `pos..`, writing their keys and values into
    /// `kv`, and returns logits `(n, vocab)` for the positions `want` names.
    pub fn forward(
        &self,
        layers: &dyn LayerProvider,
        kv: &mut KvCache,
        tokens: &[u32],
        pos: usize,
        want: LogitsFor,
    ) -> Result<Tensor, ModelError> {
        let n = tokens.len();
        if n == 0 {
            return Err(ModelError::Format("forward called with no tokens".into()));
        }
        if pos + n > self.max_positions() || pos + n > kv.capacity() {
            return Err(ModelError::ContextFull {
                needed: pos + n,
                context: self.max_positions().min(kv.capacity()),
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.hp.n_vocab) {
            return Err(ModelError::Format(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.token_embd.embedding(&ids)?.unsqueeze(0)?; // (1, n, d)
        let cos = self.cos.narrow(0, pos, n)?;
        let sin = self.sin.narrow(0, pos, n)?;
        let mask = if n > 1 {
            Some(self.causal_mask(n, pos)?)
        } else {
            None
        };
        layers.for_each_layer(&mut |i, w| {
            x = self.block(w, &x, i, pos, kv, &cos, &sin, mask.as_ref())?;
            Ok(())
        })?;
        kv.set_len(pos + n);
        let x = match want {
            LogitsFor::Last => x.narrow(1, n - 1, 1)?,
            LogitsFor::All => x,
        };
        let x = candle_nn::ops::rms_norm(&x.contiguous()?, &self.output_norm, self.hp.rms_eps)?;
        let logits = self.output.forward(&x)?;
        Ok(logits.squeeze(0)?)
    }

    /// `(n_rep * n, pos + n)`: 0 where token `i` may attend key `j`, -inf
    /// after it. Rows repeat for the query heads sharing a KV head.
    fn causal_mask(&self, n: usize, pos: usize) -> Result<Tensor, ModelError> {
        let total = pos + n;
        let n_rep = self.hp.n_head / self.hp.n_head_kv;
        let mut m = Vec::with_capacity(n_rep * n * total);
        for _ in 0..n_rep {
            for i in 0..n {
                m.extend((0..total).map(|j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }));
            }
        }
        Ok(Tensor::from_vec(m, (n_rep * n, total), &Device::Cpu)?)
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        match self.hp.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin),
            RopeStyle::Halves => candle_nn::rotary_emb::rope(x, cos, sin),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        w: &LayerWeights,
        x: &Tensor,
        layer: usize,
        pos: usize,
        kv: &mut KvCache,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let hp = &self.hp;
        let (_, n, _) = x.dims3()?;
        let (hd, n_head, n_kv) = (hp.head_dim, hp.n_head, hp.n_head_kv);
        let n_rep = n_head / n_kv;

        let h = candle_nn::ops::rms_norm(x, &w.attn_norm, hp.rms_eps)?;
        let q =
            w.wq.forward(&h)?
                .reshape((1, n, n_head, hd))?
                .transpose(1, 2)?
                .contiguous()?;
        let k =
            w.wk.forward(&h)?
                .reshape((1, n, n_kv, hd))?
                .transpose(1, 2)?
                .contiguous()?;
        let v =
            w.wv.forward(&h)?
                .reshape((1, n, n_kv, hd))?
                .transpose(1, 2)?;
        let q = self.rope(&q, cos, sin)?;
        let k = self.rope(&k, cos, sin)?;
        let (k_all, v_all) = kv.append(layer, pos, &k, &v)?;

        // Query heads that share a KV head are stacked along the row axis, so
        // the cached keys are used as they are, never repeated or copied.
        let q = q.reshape((1, n_kv, n_rep * n, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut att = (q.matmul(&k_all.t()?)? * scale)?;
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v_all)?; // (1, n_kv, n_rep*n, hd)
        let y = y
            .reshape((1, n_head, n, hd))?
            .transpose(1, 2)?
            .reshape((1, n, n_head * hd))?;
        let x = (x + w.wo.forward(&y)?)?;

        let h = candle_nn::ops::rms_norm(&x, &w.ffn_norm, hp.rms_eps)?;
        let gate = candle_nn::ops::silu(&w.w_gate.forward(&h)?)?;
        let up = w.w_up.forward(&h)?;
        let ff = w.w_down.forward(&(gate * up)?)?;
        Ok((x + ff)?)
    }
}

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax of one row, in f64 for a stable perplexity sum.
pub fn log_softmax_at(row: &[f32], index: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| ((v as f64) - max).exp()).sum();
    (row[index] as f64 - max) - sum.ln()
}

/// Converts a logits tensor `(n, vocab)` to rows.
pub fn logits_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
    Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}
