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
use candle_core::{Device, Tensor};

use super::device_block::{DeviceBlock, DeviceHead, DeviceRope};
use super::hparams::{HParams, RopeStyle};
use super::kv_cache::{KvCache, LayerKv};
use super::linear::Linear;
use super::ModelError;
use crate::kernels::formats::QActs;
use crate::kernels::kv::{tile_accumulate, tile_scores, TILE_KEYS};
use crate::kernels::matmul::Out;
use crate::kernels::pool::{self, Tasks};
use crate::kernels::{dequant_gemm, ops};

/// One transformer block's tensors, in the form a backend keeps them: norm
/// weights as `V`, projections (with their biases) as `P`.
#[derive(Debug)]
pub struct BlockTensors<V, P> {
    pub attn_norm: V,
    pub wq: P,
    pub wk: P,
    pub wv: P,
    pub wo: P,
    /// Per-head query and key norms (Qwen3, Gemma 3).
    pub q_norm: Option<V>,
    pub k_norm: Option<V>,
    /// The norm of the attention output (Gemma 3).
    pub post_attn_norm: Option<V>,
    pub ffn_norm: V,
    pub ffn: Ffn<P>,
    /// The norm of the MLP output (Gemma 3).
    pub post_ffn_norm: Option<V>,
}

/// A block's feed-forward part.
#[derive(Debug)]
pub enum Ffn<P> {
    Dense {
        gate: P,
        up: P,
        down: P,
    },
    /// Mixture of experts: the router (`n_expert × n_embd`) and the
    /// experts.
    Moe {
        router: P,
        experts: Experts<P>,
    },
}

/// A mixture-of-experts layer's experts.
#[derive(Debug)]
pub enum Experts<P> {
    /// In memory, stacked as llama.cpp stores them — gate and up
    /// `n_expert·n_ff_exp × n_embd`, down `n_expert·n_embd × n_ff_exp` — so
    /// expert `e` is a range of rows of each.
    Stacked { gate: P, up: P, down: P },
    /// On disk, read when a token is routed to them (through a cache).
    OnDemand(Arc<dyn ExpertSource>),
}

/// One expert's projections.
#[derive(Debug)]
pub struct Expert {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// The buffer they lie in, when read from disk (given back for reuse).
    pub buf: Option<Arc<crate::placement::alloc::AlignedBytes>>,
}

/// Where a layer's experts come from when they are not in memory.
pub trait ExpertSource: Send + Sync + std::fmt::Debug {
    /// Experts `ids` (ascending, distinct), in that order.
    fn fetch(&self, ids: &[usize]) -> Result<Vec<Arc<Expert>>, ModelError>;

    /// The experts a pass fetched, once it is done with them.
    fn release(&self, _experts: Vec<Arc<Expert>>) {}

    /// Experts `ids` (most probable first) will probably be fetched soon:
    /// a source that reads them may start now, in the background.
    fn read_ahead(&self, _ids: &[usize]) {}
}

/// One transformer block's weights for the host kernels.
pub type LayerWeights = BlockTensors<Vec<f32>, Linear>;

impl<V, P> BlockTensors<V, P> {
    /// Reads a block's (already shape-checked) tensors by name: `vector`
    /// makes a norm weight or a bias, `matrix` a projection from its weight
    /// and bias. The one place that knows which tensors a block has.
    pub fn read(
        hp: &HParams,
        src: &mut dyn TensorSource,
        mut vector: impl FnMut(&mut dyn TensorSource, &str) -> Result<V, ModelError>,
        mut matrix: impl FnMut(&mut dyn TensorSource, &str, Option<V>) -> Result<P, ModelError>,
    ) -> Result<Self, ModelError> {
        let (bq, bk, bv) = if hp.has_qkv_bias {
            (
                Some(vector(src, "attn_q.bias")?),
                Some(vector(src, "attn_k.bias")?),
                Some(vector(src, "attn_v.bias")?),
            )
        } else {
            (None, None, None)
        };
        let mut opt =
            |src: &mut dyn TensorSource, on: bool, name: &str| -> Result<Option<V>, ModelError> {
                if on {
                    vector(src, name).map(Some)
                } else {
                    Ok(None)
                }
            };
        let q_norm = opt(src, hp.qk_norm, "attn_q_norm.weight")?;
        let k_norm = opt(src, hp.qk_norm, "attn_k_norm.weight")?;
        let post_attn_norm = opt(src, hp.post_norms(), "post_attention_norm.weight")?;
        let post_ffn_norm = opt(src, hp.post_norms(), "post_ffw_norm.weight")?;
        let attn_norm = vector(src, "attn_norm.weight")?;
        let ffn_norm = vector(src, "ffn_norm.weight")?;
        let ffn = if hp.moe.is_some() {
            let router = matrix(src, "ffn_gate_inp.weight", None)?;
            let experts = match src.experts() {
                Some(on_demand) => Experts::OnDemand(on_demand),
                None => Experts::Stacked {
                    gate: matrix(src, "ffn_gate_exps.weight", None)?,
                    up: matrix(src, "ffn_up_exps.weight", None)?,
                    down: matrix(src, "ffn_down_exps.weight", None)?,
                },
            };
            Ffn::Moe { router, experts }
        } else {
            Ffn::Dense {
                gate: matrix(src, "ffn_gate.weight", None)?,
                up: matrix(src, "ffn_up.weight", None)?,
                down: matrix(src, "ffn_down.weight", None)?,
            }
        };
        Ok(BlockTensors {
            attn_norm,
            wq: matrix(src, "attn_q.weight", bq)?,
            wk: matrix(src, "attn_k.weight", bk)?,
            wv: matrix(src, "attn_v.weight", bv)?,
            wo: matrix(src, "attn_output.weight", None)?,
            q_norm,
            k_norm,
            post_attn_norm,
            ffn_norm,
            ffn,
            post_ffn_norm,
        })
    }
}

/// Where a layer's named tensors come from while it is being built.
pub trait TensorSource {
    fn qtensor(&mut self, suffix: &str) -> Result<QTensor, ModelError>;

    /// A projection over the named weight; sources that hold a layer's
    /// bytes already (the disk tier's read buffer) share them instead.
    fn linear(&mut self, suffix: &str, bias: Option<Vec<f32>>) -> Result<Linear, ModelError> {
        Linear::new(Arc::new(self.qtensor(suffix)?), bias)
    }

    /// A source that keeps a mixture-of-experts layer's experts on disk
    /// hands out their reader; the stacked tensors are then not read.
    fn experts(&mut self) -> Option<Arc<dyn ExpertSource>> {
        None
    }
}

/// A small tensor (norm weights, biases) as f32 values.
pub fn to_f32_vec(t: &QTensor) -> Result<Vec<f32>, ModelError> {
    Ok(t.dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
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
        ];
        match hp.moe {
            Some(m) => v.extend([
                ("ffn_gate_inp.weight", vec![m.n_expert, d]),
                ("ffn_gate_exps.weight", vec![m.n_expert, m.n_ff_exp, d]),
                ("ffn_up_exps.weight", vec![m.n_expert, m.n_ff_exp, d]),
                ("ffn_down_exps.weight", vec![m.n_expert, d, m.n_ff_exp]),
            ]),
            None => v.extend([
                ("ffn_gate.weight", vec![ff, d]),
                ("ffn_up.weight", vec![ff, d]),
                ("ffn_down.weight", vec![d, ff]),
            ]),
        }
        if hp.has_qkv_bias {
            v.extend([
                ("attn_q.bias", vec![q]),
                ("attn_k.bias", vec![kv]),
                ("attn_v.bias", vec![kv]),
            ]);
        }
        if hp.qk_norm {
            v.extend([
                ("attn_q_norm.weight", vec![hd]),
                ("attn_k_norm.weight", vec![hd]),
            ]);
        }
        if hp.post_norms() {
            v.extend([
                ("post_attention_norm.weight", vec![d]),
                ("post_ffw_norm.weight", vec![d]),
            ]);
        }
        v
    }

    /// Builds a block from its (already shape-checked) tensors.
    pub fn load(hp: &HParams, src: &mut dyn TensorSource) -> Result<Self, ModelError> {
        Self::read(
            hp,
            src,
            |src, name| to_f32_vec(&src.qtensor(name)?),
            |src, name, bias| src.linear(name, bias),
        )
    }
}

/// A layer as the provider hands it over: weights for the host kernels, or
/// a block that runs on a candle device (the GPU tier).
#[derive(Clone, Copy)]
pub enum Block<'a> {
    Host(&'a LayerWeights),
    Device {
        block: &'a DeviceBlock,
        rope: &'a DeviceRope,
    },
}

/// Hands the transformer its layers in order. Implemented by the tier store,
/// which may fetch a layer from disk just before it is needed.
pub trait LayerProvider {
    /// Calls `f(i, layer)` for every layer `i` in order; stops at the first
    /// error.
    fn for_each_layer(
        &self,
        f: &mut dyn FnMut(usize, Block<'_>) -> Result<(), ModelError>,
    ) -> Result<(), ModelError>;

    /// Layer `i`'s weights when they stay in host memory while the layers
    /// before it run and its experts are read on demand: the layer before
    /// predicts which of them to read ahead.
    fn read_ahead_layer(&self, _i: usize) -> Option<&LayerWeights> {
        None
    }
}

/// The rotary tables for positions `0..max_positions`: `max_positions ×
/// head_dim/2` cosines, then sines; `local`: the sliding layers' (their own
/// base, no scaling).
/// Fails, rather than aborting, when the tables do not fit in memory.
pub(crate) fn rope_tables(
    hp: &HParams,
    max_positions: usize,
    local: bool,
) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let half = hp.head_dim / 2;
    let (base, scale, factors) = if local {
        (hp.rope_freq_base_swa, 1.0, None)
    } else {
        (
            hp.rope_freq_base,
            hp.rope_freq_scale,
            hp.rope_freq_factors.as_deref(),
        )
    };
    if factors.is_some_and(|f| f.len() != half || f.iter().any(|&x| !(x.is_finite() && x > 0.0))) {
        return Err(ModelError::Format(format!(
            "rope_freqs.weight must hold {half} positive factors"
        )));
    }
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / base.powf(2.0 * i as f32 / hp.head_dim as f32);
            scale * factors.map_or(f, |x| f / x[i])
        })
        .collect();
    let table = || -> Result<Vec<f32>, ModelError> {
        let n = max_positions.saturating_mul(half);
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| {
            ModelError::Invalid(format!(
                "not enough memory for the rotary tables of a {max_positions}-token context; ask for a shorter context"
            ))
        })?;
        Ok(v)
    };
    let (mut cos, mut sin) = (table()?, table()?);
    for p in 0..max_positions {
        for f in &inv_freq {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((cos, sin))
}

/// Copies a device hidden state (`n × n_embd`) back into host memory.
fn download(x: &Tensor, dst: &mut [f32]) -> Result<(), ModelError> {
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    if v.len() != dst.len() {
        return Err(ModelError::Format("hidden state has the wrong size".into()));
    }
    dst.copy_from_slice(&v);
    Ok(())
}

/// What one forward pass runs: tokens at cache slots `pos..`, with their
/// rotary positions when those are not the slots themselves (M-RoPE), and
/// embeddings that replace some tokens' rows (an image's tokens).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub tokens: &'a [u32],
    pub pos: usize,
    /// (t, h, w) rotary positions per token (vision-language models).
    pub positions: Option<&'a [[u32; 3]]>,
    /// (index into `tokens`, `n_embd` values) rows written over the token
    /// embeddings.
    pub embeds: &'a [(usize, &'a [f32])],
    /// (layer, index into `tokens`, `n_embd` values) rows added to the
    /// hidden state after that layer (Qwen3-VL's DeepStack features of an
    /// image's tokens).
    pub deepstack: &'a [(usize, usize, &'a [f32])],
}

impl<'a> Input<'a> {
    /// Plain text at slots (and positions) `pos..`.
    pub fn text(tokens: &'a [u32], pos: usize) -> Self {
        Input {
            tokens,
            pos,
            positions: None,
            embeds: &[],
            deepstack: &[],
        }
    }
}

/// Which positions need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// The last position only (generation).
    Last,
    /// Every position (perplexity, parity checks).
    All,
}

/// Working buffers of a forward pass, kept across calls so the decode step
/// allocates nothing once they have grown to the largest batch.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The residual stream, `n × n_embd`.
    x: Vec<f32>,
    /// Normed input of the next projection; also the attention and MLP
    /// outputs before they join the residual stream.
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output, `n × n_head·head_dim`.
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    acts: QActs,
    /// Router logits (`n × n_expert`), the rows routed to one expert, and
    /// the weighted sum of the experts' outputs.
    router: Vec<f32>,
    expert_in: Vec<f32>,
    expert_out: Vec<f32>,
    moe_out: Vec<f32>,
    /// The next layer's normed input and router logits as predicted for
    /// reading its experts ahead.
    ahead: Vec<f32>,
    ahead_logits: Vec<f32>,
    /// The experts each token of the last pass was routed to, per layer
    /// (`n × n_expert_used`, most probable first).
    pub routes: Vec<Vec<u32>>,
    /// How many tokens each layer's experts have served since the scratch
    /// was made (`n_layer × n_expert`).
    pub expert_tokens: Vec<Vec<u64>>,
    logits: Vec<f32>,
    /// Rotary cosines and sines of this pass's tokens (`n × head_dim/2`)
    /// when positions are given per token.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// Seconds each layer took in the last pass (including waiting for a
    /// disk layer), for telemetry.
    pub layer_secs: Vec<f64>,
}

impl Scratch {
    /// The logits of the last forward pass (as many as it returned).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

thread_local! {
    /// Each compute thread's attention scores for one query.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each compute thread's tiled-attention state (see [`Tiles`]).
    static TILES: std::cell::RefCell<Tiles> = std::cell::RefCell::new(Tiles::default());
}

/// Passes of at least this many tokens over at least [`TILED_MIN_KEYS`]
/// keys run tiled attention; smaller ones (decode, speculative
/// verification, short prompts, whose keys stay in cache anyway) give each
/// query the kernel a single token gets.
const TILED_MIN_TOKENS: usize = 32;
const TILED_MIN_KEYS: usize = 1024;
/// Query positions of a tiled task (times the heads of one KV group).
const TILE_QUERIES: usize = 16;

/// Scratch of one tiled-attention task: a tile of keys and values as f32,
/// and per query row its running maximum, sum and output.
#[derive(Default)]
struct Tiles {
    /// The task's query rows, scaled.
    q: Vec<f32>,
    k: Vec<f32>,
    /// The keys transposed (`hd × TILE_KEYS`).
    kt: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    out: Vec<f32>,
}

/// Everything outside the blocks: embeddings, final norm, output head, and the
/// rotary tables.
pub struct Transformer {
    pub hp: HParams,
    token_embd: Arc<QTensor>,
    output_norm: Vec<f32>,
    output: Linear,
    /// The head's weight (the token embedding when tied), kept to put a copy
    /// on the GPU tier.
    output_weight: Arc<QTensor>,
    /// The final norm and head on the GPU tier's device, when placed there.
    device_head: Option<DeviceHead>,
    /// `max_positions × head_dim/2` cosines and sines.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The same for the sliding-window layers when their base differs.
    cos_swa: Vec<f32>,
    sin_swa: Vec<f32>,
    max_positions: usize,
}

impl Transformer {
    /// `max_positions` bounds the rotary tables (the context length in use).
    pub fn new(
        hp: HParams,
        token_embd: QTensor,
        output_norm: Vec<f32>,
        output: Option<QTensor>,
        max_positions: usize,
    ) -> Result<Self, ModelError> {
        let token_embd = Arc::new(token_embd);
        let output_weight = match output {
            Some(w) => Arc::new(w),
            None => token_embd.clone(),
        };
        let output = Linear::new(output_weight.clone(), None)?;
        if output.in_features() != hp.n_embd || output.out_features() != hp.n_vocab {
            return Err(ModelError::Format(format!(
                "output head is {}x{}, expected {}x{}",
                output.out_features(),
                output.in_features(),
                hp.n_vocab,
                hp.n_embd
            )));
        }
        if output_norm.len() != hp.n_embd {
            return Err(ModelError::Format(
                "output_norm.weight has the wrong shape".into(),
            ));
        }
        if token_embd.shape().dims2()? != (hp.n_vocab, hp.n_embd) {
            return Err(ModelError::Format(
                "token_embd.weight has the wrong shape".into(),
            ));
        }
        let (cos, sin) = rope_tables(&hp, max_positions, false)?;
        let (cos_swa, sin_swa) = if hp.sliding_window > 0 {
            rope_tables(&hp, max_positions, true)?
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Transformer {
            cos,
            sin,
            cos_swa,
            sin_swa,
            max_positions,
            hp,
            token_embd,
            output_norm,
            output,
            output_weight,
            device_head: None,
        })
    }

    /// Runs the final norm and output head on `device` (the plan put the
    /// head on the GPU tier), or on the host again with `None`.
    pub fn set_device_head(&mut self, device: Option<&Device>) -> Result<(), ModelError> {
        self.device_head = match device {
            Some(d)
                if self
                    .device_head
                    .as_ref()
                    .is_some_and(|h| h.device().same_device(d)) =>
            {
                return Ok(())
            }
            Some(d) => Some(DeviceHead::new(
                &self.output_norm,
                &self.output_weight,
                self.hp.rms_eps,
                d,
            )?),
            None => None,
        };
        Ok(())
    }

    /// Whether the head runs on a device.
    pub fn head_on_device(&self) -> bool {
        self.device_head.is_some()
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Bytes of the rotary tables and the per-call scratch at `n` tokens
    /// (for the memory footprint).
    pub fn scratch_bytes(&self, n: usize) -> usize {
        let hp = &self.hp;
        let (qd, kvd) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
        let floats = n * (2 * hp.n_embd + qd + 2 * kvd + qd + 2 * hp.n_ff) + n * hp.n_vocab;
        let acts = n * hp.n_ff.max(qd);
        (floats + 2 * self.cos.len() + 2 * self.cos_swa.len()) * 4 + acts
    }

    /// Runs `tokens` at positions `pos..`, writing their keys and values into
    /// `kv`, and returns logits (`rows × vocab`, row-major) for the
    /// positions `want` names.
    pub fn forward<'s>(
        &self,
        layers: &dyn LayerProvider,
        kv: &mut KvCache,
        s: &'s mut Scratch,
        input: Input<'_>,
        want: LogitsFor,
    ) -> Result<&'s [f32], ModelError> {
        let hp = &self.hp;
        let (tokens, pos) = (input.tokens, input.pos);
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
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= hp.n_vocab) {
            return Err(ModelError::Format(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        let (d, qd, kvd) = (
            hp.n_embd,
            hp.n_head * hp.head_dim,
            hp.n_head_kv * hp.head_dim,
        );
        grow(&mut s.x, n * d);
        grow(&mut s.h, n * d);
        grow(&mut s.q, n * qd);
        grow(&mut s.k, n * kvd);
        grow(&mut s.v, n * kvd);
        grow(&mut s.att, n * qd);
        let ff = hp.n_ff.max(hp.moe.map_or(0, |m| m.n_ff_exp));
        grow(&mut s.gate, n * ff);
        grow(&mut s.up, n * ff);

        let et = self.token_embd.dtype();
        let row_bytes = d / et.block_size() * et.type_size();
        let embd = self.token_embd.data()?;
        for (i, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            let row = &mut s.x[i * d..(i + 1) * d];
            dequant_gemm::dequantize_rows(et, &embd[t * row_bytes..(t + 1) * row_bytes], row)?;
            if let Some(scale) = hp.embed_scale() {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        for &(i, row) in input.embeds {
            if i >= n || row.len() != d {
                return Err(ModelError::Format(format!(
                    "an embedding row for token {i} of {n} has {} values, expected {d}",
                    row.len()
                )));
            }
            s.x[i * d..(i + 1) * d].copy_from_slice(row);
        }
        let custom_rope = match input.positions {
            Some(p) => {
                self.rope_for(p, n, s)?;
                true
            }
            None => false,
        };
        // The same angles as device tensors, made once when a device layer
        // first needs them.
        let mut device_rope: Option<(Tensor, Tensor)> = None;
        s.layer_secs.resize(hp.n_layer, 0.0);
        let mut mark = std::time::Instant::now();
        // The hidden state while it is on a device: it crosses only where
        // the pass enters or leaves the GPU tier.
        let mut on_device: Option<Tensor> = None;
        layers.for_each_layer(&mut |i, layer| {
            match layer {
                Block::Host(w) => {
                    if let Some(x) = on_device.take() {
                        download(&x, &mut s.x[..n * d])?;
                    }
                    let next = layers.read_ahead_layer(i + 1);
                    self.block(w, next, i, pos, n, kv, s, custom_rope)?;
                }
                Block::Device { block, rope } => {
                    let x = match on_device.take() {
                        Some(x) if x.device().same_device(block.device()) => x,
                        Some(x) => x.to_device(block.device())?,
                        None => Tensor::from_slice(&s.x[..n * d], (n, d), block.device())?,
                    };
                    let angles = if custom_rope {
                        let half = hp.head_dim / 2;
                        let stale = device_rope
                            .as_ref()
                            .is_none_or(|(c, _)| !c.device().same_device(block.device()));
                        if stale {
                            device_rope = Some((
                                Tensor::from_slice(
                                    &s.rope_cos[..n * half],
                                    (n, half),
                                    block.device(),
                                )?,
                                Tensor::from_slice(
                                    &s.rope_sin[..n * half],
                                    (n, half),
                                    block.device(),
                                )?,
                            ));
                        }
                        device_rope.as_ref().map(|(c, s)| (c, s))
                    } else {
                        None
                    };
                    on_device = Some(if block.kv_on_device() {
                        block.forward(&x, pos, rope, angles)?
                    } else {
                        // The cache is in RAM: the host caches the keys
                        // and values and attends; the device does the rest.
                        let (qd, kvd) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
                        let (q, k, v) = block.qkv(&x, pos, rope, angles)?;
                        download(&q, &mut s.q[..n * qd])?;
                        download(&k, &mut s.k[..n * kvd])?;
                        download(&v, &mut s.v[..n * kvd])?;
                        Self::attend_host(hp, i, pos, n, kv, s)?;
                        let att = Tensor::from_slice(&s.att[..n * qd], (n, qd), block.device())?;
                        block.finish(&x, &att)?
                    });
                }
            }
            if input.deepstack.iter().any(|&(l, _, _)| l == i) {
                // A few rows after the first layers of an image prompt: on
                // the host, the hidden state crossing once more.
                if let Some(x) = on_device.take() {
                    download(&x, &mut s.x[..n * d])?;
                }
                for &(_, t, row) in input.deepstack.iter().filter(|&&(l, _, _)| l == i) {
                    if t >= n || row.len() != d {
                        return Err(ModelError::Format(format!(
                            "a DeepStack row for token {t} of {n} has {} values, expected {d}",
                            row.len()
                        )));
                    }
                    for (x, v) in s.x[t * d..(t + 1) * d].iter_mut().zip(row) {
                        *x += v;
                    }
                }
            }
            let now = std::time::Instant::now();
            if let Some(t) = s.layer_secs.get_mut(i) {
                *t = (now - mark).as_secs_f64();
            }
            mark = now;
            Ok(())
        })?;
        kv.set_len(pos + n);
        let first = match want {
            LogitsFor::Last => n - 1,
            LogitsFor::All => 0,
        };
        let m = n - first;
        if let Some(head) = &self.device_head {
            let x = match on_device.take() {
                Some(x) => x.narrow(0, first, m)?.to_device(head.device())?,
                None => Tensor::from_slice(&s.x[first * d..n * d], (m, d), head.device())?,
            };
            grow(&mut s.logits, m * hp.n_vocab);
            download(&head.logits(&x)?, &mut s.logits[..m * hp.n_vocab])?;
            return Ok(&s.logits[..m * hp.n_vocab]);
        }
        if let Some(x) = on_device.take() {
            download(&x, &mut s.x[..n * d])?;
        }
        ops::rms_norm(
            &s.x[first * d..n * d],
            &self.output_norm,
            hp.rms_eps,
            &mut s.h[..m * d],
        );
        self.project(&self.output, m, d, |s| (&s.h, &mut s.logits), s)?;
        Ok(&s.logits[..m * hp.n_vocab])
    }

    /// Runs `linear` on the first `m` rows of the input `io` picks, into the
    /// output it picks (grown to fit), quantizing the input first.
    fn project(
        &self,
        linear: &Linear,
        m: usize,
        k: usize,
        io: impl FnOnce(&mut Scratch) -> (&Vec<f32>, &mut Vec<f32>),
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        self.project_with(linear, m, k, io, s, true)
    }

    /// [`Transformer::project`] on the input the last projection quantized,
    /// quantized again only where `linear` rounds it differently (a Q6_K
    /// value projection beside Q4_K keys rounds the same; a Q8_0 one not).
    fn project_again(
        &self,
        linear: &Linear,
        m: usize,
        k: usize,
        io: impl FnOnce(&mut Scratch) -> (&Vec<f32>, &mut Vec<f32>),
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let quantize = !linear.shares_qacts(&s.acts);
        self.project_with(linear, m, k, io, s, quantize)
    }

    fn project_with(
        &self,
        linear: &Linear,
        m: usize,
        k: usize,
        io: impl FnOnce(&mut Scratch) -> (&Vec<f32>, &mut Vec<f32>),
        s: &mut Scratch,
        quantize: bool,
    ) -> Result<(), ModelError> {
        let mut acts = std::mem::take(&mut s.acts);
        let (x, out) = io(s);
        grow(out, m * linear.out_features());
        let r = (|| {
            if quantize && linear.wants_qacts() {
                linear.quantize_input(&x[..m * k], m, &mut acts)?;
            }
            linear.forward(&x[..m * k], m, &acts, out)
        })();
        s.acts = acts;
        r
    }

    /// The rotary angles of tokens at (t, h, w) positions into the
    /// scratch: frequency `j` takes its angle from the position its
    /// M-RoPE section names (all three are equal for text).
    fn rope_for(&self, p: &[[u32; 3]], n: usize, s: &mut Scratch) -> Result<(), ModelError> {
        let half = self.hp.head_dim / 2;
        if p.len() != n {
            return Err(ModelError::Format(format!(
                "{} rotary positions for {n} tokens",
                p.len()
            )));
        }
        let sections = self.hp.mrope_sections.unwrap_or([half, 0, 0]);
        grow(&mut s.rope_cos, n * half);
        grow(&mut s.rope_sin, n * half);
        if self.hp.mrope_interleaved {
            // Qwen3-VL: t h w t h w … for the first 3 × sections[1|2]
            // frequencies, the temporal position after.
            for (t, pt) in p.iter().enumerate() {
                if let Some(&at) = pt.iter().find(|&&a| a as usize >= self.max_positions) {
                    return Err(ModelError::ContextFull {
                        needed: at as usize + 1,
                        context: self.max_positions,
                    });
                }
                for j in 0..half {
                    let axis = match j % 3 {
                        1 if j < 3 * sections[1] => 1,
                        2 if j < 3 * sections[2] => 2,
                        _ => 0,
                    };
                    let src = pt[axis] as usize * half + j;
                    s.rope_cos[t * half + j] = self.cos[src];
                    s.rope_sin[t * half + j] = self.sin[src];
                }
            }
            return Ok(());
        }
        for (t, pt) in p.iter().enumerate() {
            let mut j = 0;
            for (sec, &len) in sections.iter().enumerate() {
                let at = pt[sec] as usize;
                if at >= self.max_positions {
                    return Err(ModelError::ContextFull {
                        needed: at + 1,
                        context: self.max_positions,
                    });
                }
                let src = at * half;
                for jj in j..j + len {
                    s.rope_cos[t * half + jj] = self.cos[src + jj];
                    s.rope_sin[t * half + jj] = self.sin[src + jj];
                }
                j += len;
            }
        }
        Ok(())
    }

    /// Rotates each `head_dim` slice of `x` (`n` tokens × `heads` heads) to
    /// its position: slots `pos..`, or the angles `rope_for` computed.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut [f32],
        n: usize,
        heads: usize,
        pos: usize,
        custom: Option<(&[f32], &[f32])>,
        local: bool,
    ) {
        let hd = self.hp.head_dim;
        let half = hd / 2;
        let (tc, ts) = if local {
            (&self.cos_swa, &self.sin_swa)
        } else {
            (&self.cos, &self.sin)
        };
        for t in 0..n {
            let (cos, sin) = match custom {
                Some((c, s)) => (&c[t * half..(t + 1) * half], &s[t * half..(t + 1) * half]),
                None => {
                    let base = (pos + t) * half;
                    (&tc[base..base + half], &ts[base..base + half])
                }
            };
            for h in 0..heads {
                let v = &mut x[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                match self.hp.rope_style {
                    RopeStyle::Interleaved => {
                        for (j, pair) in v.chunks_exact_mut(2).enumerate() {
                            let (a, b) = (pair[0], pair[1]);
                            pair[0] = a * cos[j] - b * sin[j];
                            pair[1] = a * sin[j] + b * cos[j];
                        }
                    }
                    RopeStyle::Halves => {
                        let (lo, hi) = v.split_at_mut(half);
                        for j in 0..half {
                            let (a, b) = (lo[j], hi[j]);
                            lo[j] = a * cos[j] - b * sin[j];
                            hi[j] = a * sin[j] + b * cos[j];
                        }
                    }
                }
            }
        }
    }

    /// Causal attention of `n` queries at positions `pos..` over the layer's
    /// cached keys `0..pos + n`, in parallel over heads and query chunks.
    fn attention(hp: &HParams, kv: LayerKv<'_>, q: &[f32], n: usize, pos: usize, out: &mut [f32]) {
        if n >= TILED_MIN_TOKENS && pos + n >= TILED_MIN_KEYS {
            return Self::attention_tiled(hp, kv, q, n, pos, out);
        }
        Self::attention_rows(hp, kv, q, n, pos, out)
    }

    /// Attention query by query (the kernel a single token gets).
    fn attention_rows(
        hp: &HParams,
        kv: LayerKv<'_>,
        q: &[f32],
        n: usize,
        pos: usize,
        out: &mut [f32],
    ) {
        let (hd, nh) = (hp.head_dim, hp.n_head);
        let n_rep = nh / hp.n_head_kv;
        let qd = nh * hd;
        let scale = hp.attn_scale.unwrap_or(1.0 / (hd as f32).sqrt());
        let chunk = n.div_ceil(8).max(1);
        let q_chunks = n.div_ceil(chunk);
        let tasks = Tasks::new(nh * q_chunks);
        let dst = Out(out.as_mut_ptr());
        pool::run(&|_| {
            SCORES.with(|cell| {
                let mut scores = cell.borrow_mut();
                while let Some(t) = tasks.next() {
                    let (head, qc) = (t / q_chunks, t % q_chunks);
                    let g = head / n_rep;
                    for i in qc * chunk..((qc + 1) * chunk).min(n) {
                        let end = pos + i + 1;
                        let first = kv.first_seen(pos + i);
                        let len = end - first;
                        if scores.len() < len {
                            scores.resize(len, 0.0);
                        }
                        let qv = &q[i * qd + head * hd..i * qd + (head + 1) * hd];
                        let (keys, values) = kv.rows(g, first, len);
                        // SAFETY: this task alone writes head `head` of query
                        // `i`; the slice lies inside `out` (n × qd).
                        let o = unsafe {
                            std::slice::from_raw_parts_mut(dst.ptr().add(i * qd + head * hd), hd)
                        };
                        crate::kernels::kv::attend(qv, keys, values, scale, &mut scores[..len], o);
                    }
                }
            })
        });
    }

    /// Attention for a long pass, tiled: a task takes the query heads of
    /// one KV group at [`TILE_QUERIES`] positions and walks the keys they
    /// see in tiles of [`TILE_KEYS`], each decoded once into scratch that
    /// stays in cache for every query row, with a running (online) softmax
    /// per row. Memory per thread is a tile and the rows' outputs, whatever
    /// the length; every key and value is read from the cache once per task
    /// instead of once per query.
    fn attention_tiled(
        hp: &HParams,
        kv: LayerKv<'_>,
        q: &[f32],
        n: usize,
        pos: usize,
        out: &mut [f32],
    ) {
        let (hd, nh, nkv) = (hp.head_dim, hp.n_head, hp.n_head_kv);
        let rep = nh / nkv;
        let qd = nh * hd;
        let scale = hp.attn_scale.unwrap_or(1.0 / (hd as f32).sqrt());
        let blocks = n.div_ceil(TILE_QUERIES);
        let tasks = Tasks::new(nkv * blocks);
        let dst = Out(out.as_mut_ptr());
        pool::run(&|_| {
            TILES.with(|cell| {
                let t = &mut *cell.borrow_mut();
                while let Some(task) = tasks.next() {
                    // Later blocks (more keys) first: the long tasks start early.
                    let (g, b) = (task % nkv, blocks - 1 - task / nkv);
                    let (i0, i1) = (b * TILE_QUERIES, ((b + 1) * TILE_QUERIES).min(n));
                    let rows = (i1 - i0) * rep;
                    for buf in [&mut t.k, &mut t.v, &mut t.kt] {
                        grow(buf, TILE_KEYS * hd);
                    }
                    grow(&mut t.scores, rows * TILE_KEYS);
                    grow(&mut t.q, rows * hd);
                    grow(&mut t.out, rows * hd);
                    t.max.clear();
                    t.max.resize(rows, f32::NEG_INFINITY);
                    t.sum.clear();
                    t.sum.resize(rows, 0.0);
                    t.out[..rows * hd].fill(0.0);
                    // The task's query rows, scaled, one after another:
                    // row (i - i0)·rep + r is head g·rep + r of query i.
                    for i in i0..i1 {
                        for r in 0..rep {
                            let src = i * qd + (g * rep + r) * hd;
                            let row = (i - i0) * rep + r;
                            for (d, x) in t.q[row * hd..(row + 1) * hd]
                                .iter_mut()
                                .zip(&q[src..src + hd])
                            {
                                *d = x * scale;
                            }
                        }
                    }
                    let (first, end) = (kv.first_seen(pos + i0), pos + i1);
                    let mut k0 = first;
                    while k0 < end {
                        let k1 = (k0 + TILE_KEYS).min(end);
                        let keys_n = k1 - k0;
                        let (keys, values) = kv.rows(g, k0, keys_n);
                        keys.ty.decode(keys.bytes, &mut t.k[..keys_n * hd]);
                        values.ty.decode(values.bytes, &mut t.v[..keys_n * hd]);
                        // Keys transposed for the score kernel; columns past
                        // the tile's keys stay zero.
                        if keys_n < TILE_KEYS {
                            t.kt[..TILE_KEYS * hd].fill(0.0);
                        }
                        for j in 0..keys_n {
                            for d in 0..hd {
                                t.kt[d * TILE_KEYS + j] = t.k[j * hd + d];
                            }
                        }
                        tile_scores(&t.q, rows, hd, &t.kt, &mut t.scores);
                        // Each row's visible keys, a running softmax over
                        // them; the rest of its weights are zero.
                        for i in i0..i1 {
                            let p = pos + i;
                            let (lo, hi) = (k0.max(kv.first_seen(p)), k1.min(p + 1));
                            for r in 0..rep {
                                let row = (i - i0) * rep + r;
                                let sc = &mut t.scores[row * TILE_KEYS..(row + 1) * TILE_KEYS];
                                if lo >= hi {
                                    sc[..keys_n].fill(0.0);
                                    continue;
                                }
                                let (a, z) = (lo - k0, hi - k0);
                                let m = sc[a..z].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                                if m > t.max[row] {
                                    let c = ops::exp_scalar(t.max[row] - m);
                                    t.sum[row] *= c;
                                    t.out[row * hd..(row + 1) * hd]
                                        .iter_mut()
                                        .for_each(|x| *x *= c);
                                    t.max[row] = m;
                                }
                                t.sum[row] += ops::exp_sum(&mut sc[a..z], t.max[row]);
                                sc[..a].fill(0.0);
                                sc[z..keys_n].fill(0.0);
                            }
                        }
                        tile_accumulate(&t.scores, rows, keys_n, &t.v, hd, &mut t.out);
                        k0 = k1;
                    }
                    for i in i0..i1 {
                        for r in 0..rep {
                            let (head, row) = (g * rep + r, (i - i0) * rep + r);
                            let inv = 1.0 / t.sum[row];
                            // SAFETY: this task alone writes head `head` of
                            // query `i`; the slice lies inside `out` (n × qd).
                            let o = unsafe {
                                std::slice::from_raw_parts_mut(
                                    dst.ptr().add(i * qd + head * hd),
                                    hd,
                                )
                            };
                            for (d, s) in o.iter_mut().zip(&t.out[row * hd..(row + 1) * hd]) {
                                *d = s * inv;
                            }
                        }
                    }
                }
            })
        });
    }

    /// Writes the pass's keys and values (`s.k`, `s.v`) into the host
    /// cache of `layer` and attends with the queries `s.q` into `s.att`.
    fn attend_host(
        hp: &HParams,
        layer: usize,
        pos: usize,
        n: usize,
        kv: &mut KvCache,
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let qd = hp.n_head * hp.head_dim;
        kv.write(layer, pos, n, &s.k, &s.v)?;
        // Block-type caches hold rotated keys and values (see
        // `KvTypes::k_rotation`): queries turn with the keys, and the
        // output turns back from the values' rotation.
        let types = kv.types();
        if let Some(b) = types.k_rotation(hp.head_dim) {
            crate::kernels::kv::hadamard(&mut s.q[..n * qd], b);
        }
        Self::attention(hp, kv.layer(layer)?, &s.q, n, pos, &mut s.att[..n * qd]);
        if let Some(b) = types.v_rotation(hp.head_dim) {
            crate::kernels::kv::hadamard(&mut s.att[..n * qd], b);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        w: &LayerWeights,
        next: Option<&LayerWeights>,
        layer: usize,
        pos: usize,
        n: usize,
        kv: &mut KvCache,
        s: &mut Scratch,
        custom_rope: bool,
    ) -> Result<(), ModelError> {
        let hp = &self.hp;
        let (d, qd, kvd) = (
            hp.n_embd,
            hp.n_head * hp.head_dim,
            hp.n_head_kv * hp.head_dim,
        );
        ops::rms_norm(&s.x[..n * d], &w.attn_norm, hp.rms_eps, &mut s.h[..n * d]);
        self.project(&w.wq, n, d, |s| (&s.h, &mut s.q), s)?;
        // k and v read the same quantized input as q.
        self.project_again(&w.wk, n, d, |s| (&s.h, &mut s.k), s)?;
        self.project_again(&w.wv, n, d, |s| (&s.h, &mut s.v), s)?;
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            ops::rms_norm_in_place(&mut s.q[..n * qd], qn, hp.rms_eps);
            ops::rms_norm_in_place(&mut s.k[..n * kvd], kn, hp.rms_eps);
        }
        let half = hp.head_dim / 2;
        // Per-token angles only where the pass has them (the scratch is
        // empty for text models).
        let custom = if custom_rope {
            Some((&s.rope_cos[..n * half], &s.rope_sin[..n * half]))
        } else {
            None
        };
        let local = hp.is_sliding(layer);
        self.rope(&mut s.q[..n * qd], n, hp.n_head, pos, custom, local);
        self.rope(&mut s.k[..n * kvd], n, hp.n_head_kv, pos, custom, local);
        Self::attend_host(hp, layer, pos, n, kv, s)?;
        self.project(&w.wo, n, qd, |s| (&s.att, &mut s.h), s)?;
        if let Some(norm) = &w.post_attn_norm {
            ops::rms_norm_in_place(&mut s.h[..n * d], norm, hp.rms_eps);
        }
        ops::add(&mut s.x[..n * d], &s.h[..n * d]);

        ops::rms_norm(&s.x[..n * d], &w.ffn_norm, hp.rms_eps, &mut s.h[..n * d]);
        match &w.ffn {
            Ffn::Dense { gate, up, down } => {
                let ff = gate.out_features();
                self.project(gate, n, d, |s| (&s.h, &mut s.gate), s)?;
                self.project_again(up, n, d, |s| (&s.h, &mut s.up), s)?;
                self.activate(&mut s.gate[..n * ff], &mut s.up[..n * ff]);
                self.project(down, n, ff, |s| (&s.gate, &mut s.h), s)?;
            }
            Ffn::Moe { router, experts } => self.moe(layer, n, router, experts, next, s)?,
        }
        if let Some(norm) = &w.post_ffn_norm {
            ops::rms_norm_in_place(&mut s.h[..n * d], norm, hp.rms_eps);
        }
        ops::add(&mut s.x[..n * d], &s.h[..n * d]);
        Ok(())
    }

    /// The MLP's gate activation times `up`, into `gate`.
    fn activate(&self, gate: &mut [f32], up: &mut [f32]) {
        if self.hp.gelu() {
            ops::gelu_tanh_mul(gate, up);
        } else {
            ops::silu_mul(gate, up);
        }
    }

    /// The mixture-of-experts block on the normed rows in `s.h`, its output
    /// written back to `s.h`: each token's router picks `n_expert_used`
    /// experts (softmax, top-k, renormalised when the model says so); each
    /// expert runs once on all the rows routed to it.
    fn moe(
        &self,
        layer: usize,
        n: usize,
        router: &Linear,
        experts: &Experts<Linear>,
        next: Option<&LayerWeights>,
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let hp = &self.hp;
        let m = hp
            .moe
            .ok_or_else(|| ModelError::Format("an expert block in a dense model".into()))?;
        let (d, ff, e_n, k) = (hp.n_embd, m.n_ff_exp, m.n_expert, m.n_expert_used);
        self.project(router, n, d, |s| (&s.h, &mut s.router), s)?;
        let routes = route(&s.router[..n * e_n], n, e_n, k, m.norm_topk);
        if s.routes.len() < hp.n_layer {
            s.routes.resize(hp.n_layer, Vec::new());
        }
        s.routes[layer] = routes.iter().map(|&(e, _)| e as u32).collect();
        if s.expert_tokens.len() < hp.n_layer {
            s.expert_tokens.resize(hp.n_layer, Vec::new());
        }
        let counts = &mut s.expert_tokens[layer];
        counts.resize(e_n, 0);
        // Tokens (and weights) per expert, in expert order.
        let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e_n];
        for (i, &(e, p)) in routes.iter().enumerate() {
            by_expert[e].push((i / k, p));
            counts[e] += 1;
        }
        let used: Vec<usize> = (0..e_n).filter(|&e| !by_expert[e].is_empty()).collect();
        grow(&mut s.moe_out, n * d);
        s.moe_out[..n * d].fill(0.0);
        // Experts on disk come in groups: a prompt that routes to every
        // expert holds one group's buffers at a time, not the layer's.
        for (g, group) in used.chunks(EXPERT_GROUP).enumerate() {
            let weights: Vec<Arc<Expert>> = match experts {
                Experts::Stacked { gate, up, down } => group
                    .iter()
                    .map(|&e| {
                        Ok(Arc::new(Expert {
                            gate: gate.rows(e * ff, ff)?,
                            up: up.rows(e * ff, ff)?,
                            down: down.rows(e * d, d)?,
                            buf: None,
                        }))
                    })
                    .collect::<Result<_, ModelError>>()?,
                Experts::OnDemand(source) => source.fetch(group)?,
            };
            // The next layer's reads start once this layer's own are done
            // (not competing with them), and overlap its compute.
            if let (0, Some(next)) = (g, next) {
                self.read_ahead(n, next, s)?;
            }
            for (&e, w) in group.iter().zip(&weights) {
                let rows = &by_expert[e];
                let r = rows.len();
                grow(&mut s.expert_in, r * d);
                for (j, &(t, _)) in rows.iter().enumerate() {
                    s.expert_in[j * d..(j + 1) * d].copy_from_slice(&s.h[t * d..(t + 1) * d]);
                }
                let (g, u, dn) = (&w.gate, &w.up, &w.down);
                self.project(g, r, d, |s| (&s.expert_in, &mut s.gate), s)?;
                self.project_again(u, r, d, |s| (&s.expert_in, &mut s.up), s)?;
                self.activate(&mut s.gate[..r * ff], &mut s.up[..r * ff]);
                self.project(dn, r, ff, |s| (&s.gate, &mut s.expert_out), s)?;
                for (j, &(t, p)) in rows.iter().enumerate() {
                    ops::axpy(
                        &mut s.moe_out[t * d..(t + 1) * d],
                        p,
                        &s.expert_out[j * d..(j + 1) * d],
                    );
                }
            }
            if let Experts::OnDemand(source) = experts {
                source.release(weights);
            }
        }
        s.h[..n * d].copy_from_slice(&s.moe_out[..n * d]);
        Ok(())
    }

    /// Predicts the experts layer `next` will route these tokens to — its
    /// norm and router applied to the residual stream as it enters this
    /// layer's experts (in a trained model one block changes it little) —
    /// and asks its source to read them while this layer's experts and the
    /// next attention run.
    /// Only for passes whose predicted experts make one group (decoding):
    /// a prompt's layer reads its experts group by group anyway.
    fn read_ahead(&self, n: usize, next: &LayerWeights, s: &mut Scratch) -> Result<(), ModelError> {
        let (
            Some(m),
            Ffn::Moe {
                router,
                experts: Experts::OnDemand(source),
            },
        ) = (self.hp.moe, &next.ffn)
        else {
            return Ok(());
        };
        let (d, e_n) = (self.hp.n_embd, m.n_expert);
        grow(&mut s.ahead, n * d);
        ops::rms_norm(
            &s.x[..n * d],
            &next.ffn_norm,
            self.hp.rms_eps,
            &mut s.ahead[..n * d],
        );
        self.project(router, n, d, |s| (&s.ahead, &mut s.ahead_logits), s)?;
        let routes = route(
            &s.ahead_logits[..n * e_n],
            n,
            e_n,
            m.n_expert_used,
            m.norm_topk,
        );
        let mut score = vec![0f32; e_n];
        for &(e, p) in &routes {
            score[e] += p;
        }
        let mut ids: Vec<usize> = (0..e_n).filter(|&e| score[e] > 0.0).collect();
        if ids.len() > EXPERT_GROUP {
            return Ok(());
        }
        ids.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
        source.read_ahead(&ids);
        Ok(())
    }
}

/// Experts fetched and run together: one decode step's (Qwen3-30B-A3B and
/// Mixtral route to 8 and 2) in one go, a prompt's in groups of this many.
pub const EXPERT_GROUP: usize = 8;

/// Each of `n` tokens' `k` experts and their weights (token major, most
/// probable first; ties go to the lower index) from router logits
/// (`n × n_expert`): softmax over all experts, the top `k`, renormalised to
/// sum to one when `norm`.
pub fn route(logits: &[f32], n: usize, n_expert: usize, k: usize, norm: bool) -> Vec<(usize, f32)> {
    let mut out = Vec::with_capacity(n * k);
    let mut order: Vec<usize> = Vec::with_capacity(n_expert);
    for row in logits.chunks_exact(n_expert).take(n) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
        order.clear();
        order.extend(0..n_expert);
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let top = &order[..k];
        let probs: Vec<f32> = top.iter().map(|&e| (row[e] - max).exp() / sum).collect();
        let total: f32 = if norm { probs.iter().sum() } else { 1.0 };
        out.extend(top.iter().zip(&probs).map(|(&e, &p)| (e, p / total)));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::kv::{CacheType as C, KvTypes};

    /// Tiled attention (any pass of 32 tokens or more) equals attention
    /// query by query: grouped heads, a prompt after cached tokens over
    /// many tiles, a strong first key, every cache type, a sliding window.
    #[test]
    fn tiled_attention_equals_attention_by_query() {
        let mut hp = HParams::test_llama();
        (hp.n_head, hp.n_head_kv, hp.head_dim) = (6, 2, 64);
        let (nkv, hd, qd) = (hp.n_head_kv, hp.head_dim, hp.n_head * hp.head_dim);
        let val = |i: usize| ((i * 7919 % 2003) as f32 / 1001.0 - 1.0) * 2.0;
        for (types, window) in [
            (KvTypes::F32, 0),
            (KvTypes::new(C::F16, C::Q8_0), 0),
            (KvTypes::new(C::Q4_0, C::F16), 0),
            (KvTypes::F32, 40),
        ] {
            // Many tiles, the first key far stronger than the rest (an
            // attention sink: the running maximum jumps).
            let (pos, n) = (1100, 160);
            let mut kv = KvCache::new(1, nkv, hd, 1280);
            kv.set_types(types).unwrap();
            let mut k: Vec<f32> = (0..(pos + n) * nkv * hd).map(val).collect();
            k[..nkv * hd].iter_mut().for_each(|x| *x *= 8.0);
            let v: Vec<f32> = (0..(pos + n) * nkv * hd).map(|i| val(i + 17)).collect();
            kv.write(0, 0, pos + n, &k, &v).unwrap();
            let mut layer = kv.layer(0).unwrap();
            layer.window = window;
            let q: Vec<f32> = (0..n * qd).map(|i| val(i + 5)).collect();
            let (mut a, mut b) = (vec![0f32; n * qd], vec![0f32; n * qd]);
            Transformer::attention_tiled(&hp, layer, &q, n, pos, &mut a);
            Transformer::attention_rows(&hp, layer, &q, n, pos, &mut b);
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (x - y).abs() < 1e-4,
                    "{types} window {window}: [{i}] {x} vs {y}"
                );
            }
        }
    }
}
