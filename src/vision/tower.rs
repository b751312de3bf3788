//! The vision towers of Qwen2.5-VL and Qwen3-VL on a candle device.
//!
//! Qwen2.5-VL (RoboBrain 2.0): patch embedding as one matmul over
//! 1176-value patches, 2-D rotary embedding, RMSNorm blocks with a
//! SiLU-gated MLP, window attention (full attention in the blocks
//! `fullatt_block_indexes` names), the 2×2 patch merger, and the window
//! permutation undone at the end.
//!
//! Qwen3-VL (RoboBrain 2.5): patch 16 with a bias, a learned position table
//! resized bilinearly (corners aligned) to each image's grid and added to
//! the patch embeddings, the same 2-D rotary embedding, LayerNorm blocks
//! with an ungated GELU-tanh MLP, full attention within each frame, and
//! DeepStack: the outputs of some blocks go through mergers of their own
//! (LayerNorm over the 2×2 patches concatenated) and are added to the
//! language model's hidden states after its first layers.
//!
//! On the CPU the projections run on Spillway's own matmul kernels (the
//! weights as stored: the int8 GEMM for quantized weights, the float one
//! for f32/f16/bf16); on the GPU tier, candle's. Norms, rotary and attention
//! are candle ops on the tower's device.
//!
//! Images go through one at a time (attention never crosses images), and
//! attention runs segment by segment (a window, or the whole image) with
//! queries in chunks, so no N×N score matrix over all patches is ever built:
//! memory grows with the patches, not with their square.

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::model::device_block::Projection;
use crate::model::linear::Linear;
use crate::model::ModelError;

/// At most this many bytes of attention scores per query chunk.
const SCORES_BYTES: usize = 64 << 20;

/// Which tower: the blocks, norms and mergers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TowerKind {
    /// Qwen2.5-VL: RMSNorm, gated SiLU MLP, window attention.
    Qwen25,
    /// Qwen3-VL: LayerNorm, GELU-tanh MLP, learned positions, DeepStack.
    Qwen3,
}

/// `vision_config` of a Qwen2.5-VL or Qwen3-VL checkpoint, with the
/// defaults of the released models for keys that re-saved configs leave
/// out.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub kind: TowerKind,
    pub depth: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    /// Width of the merged tokens (the language model's hidden size).
    pub out_hidden: usize,
    pub patch_size: usize,
    pub merge_size: usize,
    pub temporal_patch_size: usize,
    /// Window side in pixels (112: 4×4 merged tokens).
    pub window_size: usize,
    pub fullatt_blocks: Vec<usize>,
    /// Qwen3-VL: the blocks whose outputs feed the DeepStack mergers, in
    /// the order of the text layers they are added after.
    pub deepstack_blocks: Vec<usize>,
    /// Qwen3-VL: rows of the learned position table (a square of side
    /// `sqrt`).
    pub position_embeddings: usize,
    pub rope_theta: f32,
    pub eps: f32,
}

impl VisionConfig {
    /// From a config.json document (`vision_config` inside it);
    /// `text_hidden` is the default width of the merger's output.
    pub fn from_config(config: &serde_json::Value, text_hidden: usize) -> Result<Self, ModelError> {
        let v = config
            .get("vision_config")
            .ok_or_else(|| ModelError::Format("config.json has no vision_config".into()))?;
        let size = |k: &str, default: usize| -> Result<usize, ModelError> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .map(|x| x as usize)
                    .filter(|&x| x > 0 && x < (1 << 24))
                    .ok_or_else(|| {
                        ModelError::Format(format!("vision_config.{k} = {x} is not a size"))
                    }),
            }
        };
        let kind = if config.get("model_type").and_then(serde_json::Value::as_str)
            == Some("qwen3_vl")
            || v.get("deepstack_visual_indexes").is_some()
        {
            TowerKind::Qwen3
        } else {
            TowerKind::Qwen25
        };
        let qwen3 = kind == TowerKind::Qwen3;
        let depth = size("depth", if qwen3 { 27 } else { 32 })?;
        let indexes = |k: &str, default: Vec<usize>| -> Result<Vec<usize>, ModelError> {
            match v.get(k) {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_u64()
                            .map(|x| x as usize)
                            .filter(|&x| x < depth)
                            .ok_or_else(|| {
                                ModelError::Format(format!(
                                    "vision_config.{k} holds {x}, not a block index"
                                ))
                            })
                    })
                    .collect(),
                _ => Ok(default.into_iter().filter(|&i| i < depth).collect()),
            }
        };
        let (fullatt_blocks, deepstack_blocks) = if qwen3 {
            (
                Vec::new(),
                indexes("deepstack_visual_indexes", vec![8, 16, 24])?,
            )
        } else {
            (
                indexes("fullatt_block_indexes", vec![7, 15, 23, 31])?,
                Vec::new(),
            )
        };
        let c = VisionConfig {
            kind,
            depth,
            hidden: size("hidden_size", if qwen3 { 1152 } else { 1280 })?,
            intermediate: size("intermediate_size", if qwen3 { 4304 } else { 3420 })?,
            heads: size("num_heads", 16)?,
            out_hidden: size("out_hidden_size", text_hidden)?,
            patch_size: size(
                "patch_size",
                size("spatial_patch_size", if qwen3 { 16 } else { 14 })?,
            )?,
            merge_size: size("spatial_merge_size", 2)?,
            temporal_patch_size: size("temporal_patch_size", 2)?,
            window_size: size("window_size", 112)?,
            fullatt_blocks,
            deepstack_blocks,
            position_embeddings: size("num_position_embeddings", 2304)?,
            rope_theta: 10_000.0,
            eps: 1e-6,
        };
        if !c.hidden.is_multiple_of(c.heads) || !(c.hidden / c.heads).is_multiple_of(4) {
            return Err(ModelError::Format(format!(
                "vision_config: hidden size {} and {} heads do not give a head size divisible by 4",
                c.hidden, c.heads
            )));
        }
        if !qwen3 && !c.window_size.is_multiple_of(c.patch_size * c.merge_size) {
            return Err(ModelError::Format(format!(
                "vision_config: window size {} is not a multiple of {}",
                c.window_size,
                c.patch_size * c.merge_size
            )));
        }
        if qwen3 {
            let side = c.position_side();
            if side * side != c.position_embeddings || side < 2 {
                return Err(ModelError::Format(format!(
                    "vision_config: num_position_embeddings {} is not the square of a side of 2 or more",
                    c.position_embeddings
                )));
            }
        }
        Ok(c)
    }

    /// Side of the square learned position table (Qwen3-VL).
    pub fn position_side(&self) -> usize {
        (self.position_embeddings as f64).sqrt().round() as usize
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Values per patch: channels × time × patch².
    pub fn patch_values(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// The tower's tensors as `(gguf name, shape)`, outermost first.
    pub fn expected_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden, self.intermediate);
        let merged = h * self.merge_size * self.merge_size;
        let qwen3 = self.kind == TowerKind::Qwen3;
        let mut v = vec![(
            "v.patch_embd.weight".to_string(),
            vec![h, self.patch_values()],
        )];
        if qwen3 {
            v.extend([
                ("v.patch_embd.bias".to_string(), vec![h]),
                (
                    "v.position_embd.weight".to_string(),
                    vec![self.position_embeddings, h],
                ),
            ]);
        }
        for b in 0..self.depth {
            let p = |s: &str| format!("v.blk.{b}.{s}");
            v.push((p("ln1.weight"), vec![h]));
            if qwen3 {
                v.push((p("ln1.bias"), vec![h]));
            }
            v.extend([
                (p("attn_qkv.weight"), vec![3 * h, h]),
                (p("attn_qkv.bias"), vec![3 * h]),
                (p("attn_out.weight"), vec![h, h]),
                (p("attn_out.bias"), vec![h]),
                (p("ln2.weight"), vec![h]),
            ]);
            if qwen3 {
                v.push((p("ln2.bias"), vec![h]));
            } else {
                v.extend([
                    (p("ffn_gate.weight"), vec![i, h]),
                    (p("ffn_gate.bias"), vec![i]),
                ]);
            }
            v.extend([
                (p("ffn_up.weight"), vec![i, h]),
                (p("ffn_up.bias"), vec![i]),
                (p("ffn_down.weight"), vec![h, i]),
                (p("ffn_down.bias"), vec![h]),
            ]);
        }
        let merger = |prefix: &str, norm: usize| {
            let mut m = vec![(format!("{prefix}.norm.weight"), vec![norm])];
            if qwen3 {
                m.push((format!("{prefix}.norm.bias"), vec![norm]));
            }
            m.extend([
                (format!("{prefix}.fc1.weight"), vec![merged, merged]),
                (format!("{prefix}.fc1.bias"), vec![merged]),
                (
                    format!("{prefix}.fc2.weight"),
                    vec![self.out_hidden, merged],
                ),
                (format!("{prefix}.fc2.bias"), vec![self.out_hidden]),
            ]);
            m
        };
        v.extend(merger("v.merger", h));
        for k in 0..self.deepstack_blocks.len() {
            v.extend(merger(&format!("v.deepstack.{k}"), merged));
        }
        v
    }

    /// Peak bytes of activations while encoding an image of `patches`
    /// patches (what the plan budgets for the max-pixels setting): the
    /// residual stream and its copies, q/k/v, the MLP's widest tensors and
    /// one chunk of attention scores.
    pub fn activation_bytes(&self, patches: usize) -> u64 {
        let (n, h, i) = (patches as u64, self.hidden as u64, self.intermediate as u64);
        let floats = n * (6 * h + 3 * i) + n * self.patch_values() as u64;
        floats * 4 + SCORES_BYTES as u64
    }
}

/// A projection of the tower: on the CPU through Spillway's own kernels
/// (the weight as stored — the int8 GEMM for quantized weights, the float
/// one for f32/f16/bf16), on a GPU through candle. `SPILLWAY_TOWER_MATMUL=
/// candle` keeps candle's CPU matmul (for comparing the two).
enum TowerProj {
    Host(Linear),
    Device(Projection),
}

impl TowerProj {
    /// `m` rows of `xs` through the projection, on the host.
    fn forward_vec(&self, xs: &[f32], m: usize) -> Result<Vec<f32>, ModelError> {
        match self {
            TowerProj::Host(l) => {
                let k = l.in_features();
                if xs.len() != m * k {
                    return Err(ModelError::Format(format!(
                        "{} inputs for {m} rows of a projection of {k}",
                        xs.len()
                    )));
                }
                let mut acts = crate::kernels::formats::QActs::default();
                if l.wants_qacts() {
                    l.quantize_input(xs, m, &mut acts)?;
                }
                let mut out = vec![0f32; m * l.out_features()];
                l.forward(xs, m, &acts, &mut out)?;
                Ok(out)
            }
            TowerProj::Device(p) => {
                let k = xs.len().checked_div(m).unwrap_or(0);
                let x = Tensor::from_slice(xs, (m, k), &Device::Cpu)?;
                Ok(p.forward(&x)?
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?)
            }
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            TowerProj::Device(p) => p.forward(x),
            TowerProj::Host(l) => {
                let (m, k) = x.dims2()?;
                if k != l.in_features() {
                    return Err(ModelError::Format(format!(
                        "{k} inputs for a projection of {}",
                        l.in_features()
                    )));
                }
                let xs = x
                    .to_dtype(candle_core::DType::F32)?
                    .contiguous()?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let out = self.forward_vec(&xs, m)?;
                Ok(Tensor::from_vec(out, (m, l.out_features()), x.device())?)
            }
        }
    }
}

/// Whether the tower's CPU matmuls stay on candle (`SPILLWAY_TOWER_MATMUL=
/// candle`) rather than Spillway's kernels.
fn candle_on_cpu() -> bool {
    std::env::var("SPILLWAY_TOWER_MATMUL").is_ok_and(|v| v.eq_ignore_ascii_case("candle"))
}

/// A norm of the tower: RMSNorm (Qwen2.5-VL) or LayerNorm with a bias
/// (Qwen3-VL).
enum Norm {
    Rms(Tensor),
    Layer(Tensor, Tensor),
}

impl Norm {
    fn forward(&self, x: &Tensor, eps: f32) -> Result<Tensor, ModelError> {
        Ok(match self {
            Norm::Rms(w) => candle_nn::ops::rms_norm(x, w, eps)?,
            Norm::Layer(w, b) => candle_nn::ops::layer_norm(x, w, b, eps)?,
        })
    }

    /// The norm of every row of `x` into `out`, on the host (f32, as
    /// candle's CPU ops compute it).
    fn forward_vec(&self, x: &[f32], eps: f32, out: &mut Vec<f32>) -> Result<(), ModelError> {
        out.clear();
        out.resize(x.len(), 0.0);
        match self {
            Norm::Rms(w) => {
                let w = w.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                crate::kernels::ops::rms_norm(x, &w, eps, out);
            }
            Norm::Layer(w, b) => {
                let w = w.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                let b = b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                let d = w.len();
                for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                    let mean = xr.iter().sum::<f32>() / d as f32;
                    let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                    let inv = 1.0 / (var + eps).sqrt();
                    for (((o, v), g), c) in or.iter_mut().zip(xr).zip(&w).zip(&b) {
                        *o = (v - mean) * inv * g + c;
                    }
                }
            }
        }
        Ok(())
    }
}

struct VisionBlock {
    norm1: Norm,
    qkv: TowerProj,
    proj: TowerProj,
    norm2: Norm,
    /// Qwen2.5-VL's SiLU gate; Qwen3-VL's MLP has none (GELU-tanh).
    gate: Option<TowerProj>,
    up: TowerProj,
    down: TowerProj,
    full_attention: bool,
}

/// A patch merger: norm, 2×2 patches concatenated (Qwen3-VL's DeepStack
/// mergers normalise after concatenating), Linear → GELU → Linear.
struct Merger {
    norm: Norm,
    /// The norm runs over the concatenated patches.
    norm_after_shuffle: bool,
    fc1: TowerProj,
    fc2: TowerProj,
}

impl Merger {
    fn forward(&self, x: &Tensor, cfg: &VisionConfig) -> Result<Tensor, ModelError> {
        let unit = cfg.merge_size * cfg.merge_size;
        let n = x.dim(0)?;
        let h = if self.norm_after_shuffle {
            let h = x.reshape((n / unit, unit * cfg.hidden))?;
            self.norm.forward(&h, cfg.eps)?
        } else {
            self.norm
                .forward(x, cfg.eps)?
                .reshape((n / unit, unit * cfg.hidden))?
        };
        let h = self.fc1.forward(&h)?.gelu_erf()?;
        self.fc2.forward(&h)
    }
}

/// What the tower gives for one image, each `tokens × out_hidden` in
/// image-token order.
pub struct VisionOutput {
    pub embeds: Tensor,
    /// Qwen3-VL's DeepStack features, one per text layer they are added
    /// after (empty for Qwen2.5-VL).
    pub deepstack: Vec<Tensor>,
}

/// The loaded tower.
pub struct VisionTower {
    pub cfg: VisionConfig,
    patch_embed: TowerProj,
    /// Qwen3-VL's learned position table, `side² × hidden`.
    pos_embed: Option<Tensor>,
    blocks: Vec<VisionBlock>,
    merger: Merger,
    deepstack: Vec<Merger>,
    device: Device,
    /// The projections run on Spillway's kernels (else candle's).
    host: bool,
    /// `head_dim/4` inverse frequencies of the 2-D rotary embedding.
    inv_freq: Vec<f32>,
    /// Bytes of the weights on the device.
    bytes: u64,
}

/// How the merged tokens of one image are grouped into attention windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    /// Merged-token index (row-major over the merged grid) in window order.
    pub index: Vec<usize>,
    /// Cumulative window lengths in patches (starting at 0; empty windows
    /// dropped).
    pub cu_seqlens: Vec<usize>,
}

/// Qwen2.5-VL's `get_vision_window_index` for one image of `grid_thw`
/// patches: windows of `ws × ws` merged tokens, the grid padded up to whole
/// windows (always by `ws − n % ws`, as the reference does).
pub fn window_index(grid_thw: [usize; 3], merge: usize, ws: usize) -> Windows {
    let [t, gh, gw] = grid_thw;
    let (lh, lw) = (gh / merge, gw / merge);
    let (ph, pw) = (ws - lh % ws, ws - lw % ws);
    let (nwh, nww) = ((lh + ph) / ws, (lw + pw) / ws);
    let mut index = Vec::with_capacity(t * lh * lw);
    let mut cu = vec![0usize];
    let unit = merge * merge;
    for ti in 0..t {
        for wy in 0..nwh {
            for wx in 0..nww {
                let mut count = 0;
                for y in wy * ws..(wy + 1) * ws {
                    for x in wx * ws..(wx + 1) * ws {
                        if y < lh && x < lw {
                            index.push(ti * lh * lw + y * lw + x);
                            count += 1;
                        }
                    }
                }
                let last = *cu.last().unwrap_or(&0);
                // unique_consecutive: an empty window adds nothing.
                if count > 0 {
                    cu.push(last + count * unit);
                }
            }
        }
    }
    Windows {
        index,
        cu_seqlens: cu,
    }
}

/// (h, w) patch coordinates of each patch in processor order (merge blocks
/// row-major, 2×2 inside each), repeated for each frame.
pub fn rot_pos_ids(grid_thw: [usize; 3], merge: usize) -> Vec<[usize; 2]> {
    let [t, gh, gw] = grid_thw;
    let mut out = Vec::with_capacity(t * gh * gw);
    for _ in 0..t {
        for hb in 0..gh / merge {
            for wb in 0..gw / merge {
                for dh in 0..merge {
                    for dw in 0..merge {
                        out.push([hb * merge + dh, wb * merge + dw]);
                    }
                }
            }
        }
    }
    out
}

/// Reads one tensor of the tower by GGUF name.
pub type TensorFn<'a> = dyn FnMut(&str) -> Result<QTensor, ModelError> + 'a;

fn f32_tensor(t: QTensor, device: &Device) -> Result<Tensor, ModelError> {
    Ok(t.dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_device(device)?)
}

impl VisionTower {
    /// `half_weights`: 16-bit matrices stay 16-bit in memory (computed in
    /// f16); otherwise they are widened to f32 (exact, twice the memory).
    /// `host_kernels`: on the CPU, run the projections on Spillway's own
    /// kernels (a tower on the GPU tier — simulated on the CPU too — keeps
    /// candle's ops, the GPU's code path).
    pub fn load(
        cfg: VisionConfig,
        get: &mut TensorFn<'_>,
        device: &Device,
        half_weights: bool,
        host_kernels: bool,
    ) -> Result<Self, ModelError> {
        let qwen3 = cfg.kind == TowerKind::Qwen3;
        let bytes = std::cell::Cell::new(0u64);
        let add = |n: usize| bytes.set(bytes.get() + n as u64);
        let host = Self::host_for(device, host_kernels);
        let proj = |get: &mut TensorFn<'_>, name: &str| -> Result<TowerProj, ModelError> {
            let w = get(&format!("{name}.weight"))?;
            let b = match get(&format!("{name}.bias")) {
                Ok(b) => {
                    add(b.storage_size_in_bytes());
                    Some(crate::model::transformer::to_f32_vec(&b)?)
                }
                // Qwen2.5-VL's patch embedding has no bias.
                Err(_) if name == "v.patch_embd" && !qwen3 => None,
                Err(e) => return Err(e),
            };
            // Spillway's kernels read the weight as stored (whole blocks a
            // row; other rows go through candle).
            let rows_whole = crate::model::linear::flat_dims(w.shape().dims())
                .is_ok_and(|(_, k)| k.is_multiple_of(w.dtype().block_size()));
            if host && rows_whole {
                add(w.storage_size_in_bytes());
                return Ok(TowerProj::Host(Linear::new(std::sync::Arc::new(w), b)?));
            }
            // 16-bit weights widened to f32 take twice their stored size.
            let widened = !half_weights
                && matches!(
                    w.dtype(),
                    candle_core::quantized::GgmlDType::F16
                        | candle_core::quantized::GgmlDType::BF16
                );
            add(w.storage_size_in_bytes() * if widened { 2 } else { 1 });
            Ok(TowerProj::Device(Projection::new(
                w,
                b,
                device,
                half_weights,
            )?))
        };
        let vector = |get: &mut TensorFn<'_>, name: &str| -> Result<Tensor, ModelError> {
            let t = get(name)?;
            add(t.storage_size_in_bytes());
            f32_tensor(t, device)
        };
        let norm = |get: &mut TensorFn<'_>, name: &str| -> Result<Norm, ModelError> {
            let w = vector(get, &format!("{name}.weight"))?;
            Ok(if qwen3 {
                Norm::Layer(w, vector(get, &format!("{name}.bias"))?)
            } else {
                Norm::Rms(w)
            })
        };
        let patch_embed = proj(get, "v.patch_embd")?;
        let pos_embed = if qwen3 {
            let t = get("v.position_embd.weight")?;
            add(t.storage_size_in_bytes());
            let t = t.dequantize(&Device::Cpu)?;
            if t.dims() != [cfg.position_embeddings, cfg.hidden] {
                return Err(ModelError::Format(format!(
                    "v.position_embd.weight has shape {:?}, expected [{}, {}]",
                    t.dims(),
                    cfg.position_embeddings,
                    cfg.hidden
                )));
            }
            Some(t.to_device(device)?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(cfg.depth);
        for b in 0..cfg.depth {
            let p = |s: &str| format!("v.blk.{b}.{s}");
            blocks.push(VisionBlock {
                norm1: norm(get, &p("ln1"))?,
                qkv: proj(get, &p("attn_qkv"))?,
                proj: proj(get, &p("attn_out"))?,
                norm2: norm(get, &p("ln2"))?,
                gate: if qwen3 {
                    None
                } else {
                    Some(proj(get, &p("ffn_gate"))?)
                },
                up: proj(get, &p("ffn_up"))?,
                down: proj(get, &p("ffn_down"))?,
                full_attention: cfg.fullatt_blocks.contains(&b),
            });
        }
        let merger = |get: &mut TensorFn<'_>, prefix: &str, after: bool| {
            Ok::<_, ModelError>(Merger {
                norm: norm(get, &format!("{prefix}.norm"))?,
                norm_after_shuffle: after,
                fc1: proj(get, &format!("{prefix}.fc1"))?,
                fc2: proj(get, &format!("{prefix}.fc2"))?,
            })
        };
        let main = merger(get, "v.merger", false)?;
        let deepstack = (0..cfg.deepstack_blocks.len())
            .map(|k| merger(get, &format!("v.deepstack.{k}"), true))
            .collect::<Result<Vec<_>, _>>()?;
        let quarter = cfg.head_dim() / 4;
        let inv_freq = (0..quarter)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / (2 * quarter) as f32))
            .collect();
        Ok(VisionTower {
            cfg,
            patch_embed,
            pos_embed,
            blocks,
            merger: main,
            deepstack,
            device: device.clone(),
            host,
            inv_freq,
            bytes: bytes.get(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the projections run on Spillway's kernels.
    pub fn on_host_kernels(&self) -> bool {
        self.host
    }

    /// Whether a tower loaded on `device` asking for `host_kernels` runs
    /// its projections on Spillway's kernels.
    pub fn host_for(device: &Device, host_kernels: bool) -> bool {
        host_kernels && device.is_cpu() && !candle_on_cpu()
    }

    /// Bytes of the weights.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The patch embeddings (`patches × hidden`) of one image, processor
    /// order (for parity checks).
    pub fn patch_embeds(&self, pixels: &[f32], patches: usize) -> Result<Tensor, ModelError> {
        let k = self.cfg.patch_values();
        if pixels.len() != patches * k {
            return Err(ModelError::Format(format!(
                "{} pixel values for {patches} patches of {k}",
                pixels.len()
            )));
        }
        let x = Tensor::from_slice(pixels, (patches, k), &self.device)?;
        self.patch_embed.forward(&x)
    }

    /// Encodes one image: `pixels` is `patches × patch_values` in processor
    /// order; returns `patches/merge² × out_hidden` embeddings in image-token
    /// order. `block_outputs` receives each block's output in processor
    /// order when given (parity checks).
    pub fn forward(
        &self,
        pixels: &[f32],
        grid_thw: [usize; 3],
        block_outputs: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor, ModelError> {
        Ok(self.encode(pixels, grid_thw, block_outputs)?.embeds)
    }

    /// The learned position embeddings of an image's patches (Qwen3-VL),
    /// processor order: the `side × side` table resized bilinearly with
    /// corners aligned to the `gh × gw` grid, four rows mixed per patch.
    pub fn position_taps(&self, grid_thw: [usize; 3]) -> Vec<([usize; 4], [f32; 4])> {
        let side = self.cfg.position_side();
        let [_, gh, gw] = grid_thw;
        // torch.linspace(0, side − 1, steps) in f32.
        let at = |i: usize, steps: usize| -> f32 {
            if steps < 2 {
                return 0.0;
            }
            let step = (side - 1) as f32 / (steps - 1) as f32;
            if i < steps / 2 {
                i as f32 * step
            } else {
                (side - 1) as f32 - (steps - 1 - i) as f32 * step
            }
        };
        rot_pos_ids(grid_thw, self.cfg.merge_size)
            .into_iter()
            .map(|[h, w]| {
                let (fh, fw) = (at(h, gh), at(w, gw));
                let (h0, w0) = (fh as usize, fw as usize);
                let (h1, w1) = ((h0 + 1).min(side - 1), (w0 + 1).min(side - 1));
                let (dh, dw) = (fh - h0 as f32, fw - w0 as f32);
                (
                    [
                        h0 * side + w0,
                        h0 * side + w1,
                        h1 * side + w0,
                        h1 * side + w1,
                    ],
                    [
                        (1.0 - dh) * (1.0 - dw),
                        (1.0 - dh) * dw,
                        dh * (1.0 - dw),
                        dh * dw,
                    ],
                )
            })
            .collect()
    }

    /// [`VisionTower::position_taps`] applied to the table: `patches ×
    /// hidden`.
    pub fn position_embeds(&self, grid_thw: [usize; 3]) -> Result<Option<Tensor>, ModelError> {
        let Some(table) = &self.pos_embed else {
            return Ok(None);
        };
        let taps = self.position_taps(grid_thw);
        let n = taps.len();
        let idx: Vec<u32> = taps.iter().flat_map(|(i, _)| i.map(|x| x as u32)).collect();
        let wts: Vec<f32> = taps.iter().flat_map(|(_, w)| *w).collect();
        let idx = Tensor::from_vec(idx, 4 * n, &self.device)?;
        let wts = Tensor::from_vec(wts, (n, 4, 1), &self.device)?;
        let rows = table
            .index_select(&idx, 0)?
            .reshape((n, 4, self.cfg.hidden))?;
        Ok(Some(rows.broadcast_mul(&wts)?.sum(1)?))
    }

    /// [`VisionTower::forward`] with the DeepStack features too.
    pub fn encode(
        &self,
        pixels: &[f32],
        grid_thw: [usize; 3],
        mut block_outputs: Option<&mut Vec<Tensor>>,
    ) -> Result<VisionOutput, ModelError> {
        let cfg = &self.cfg;
        let m = cfg.merge_size;
        let [t, gh, gw] = grid_thw;
        if t == 0 || gh % m != 0 || gw % m != 0 || gh == 0 || gw == 0 {
            return Err(ModelError::Format(format!(
                "image grid {grid_thw:?} is not whole {m}x{m} merge blocks"
            )));
        }
        let n = t * gh * gw;
        let unit = m * m;
        let hd = cfg.head_dim();
        let mut x = self.patch_embeds(pixels, n)?;
        if let Some(pos) = self.position_embeds(grid_thw)? {
            x = (x + pos)?;
        }
        let win = match cfg.kind {
            TowerKind::Qwen25 => window_index(grid_thw, m, cfg.window_size / cfg.patch_size / m),
            // Qwen3-VL: every block attends within one frame, in the
            // processor's order.
            TowerKind::Qwen3 => Windows {
                index: (0..n / unit).collect(),
                cu_seqlens: (0..=t).map(|f| f * gh * gw).collect(),
            },
        };
        let identity = win.index.iter().enumerate().all(|(i, &g)| i == g);
        // Patch order inside the windows: each merged token's 2×2 patches
        // stay together.
        let perm: Vec<u32> = win
            .index
            .iter()
            .flat_map(|&g| (0..unit).map(move |j| (g * unit + j) as u32))
            .collect();
        if !identity {
            let perm_t = Tensor::from_vec(perm.clone(), n, &self.device)?;
            x = x.index_select(&perm_t, 0)?;
        }
        // Rotary angles per patch: cat(h·inv_freq, w·inv_freq), duplicated.
        let ids = rot_pos_ids(grid_thw, m);
        let half = hd / 2;
        let mut angles = Vec::with_capacity(n * half);
        for &p in &perm {
            let [h, w] = ids[p as usize];
            angles.extend(self.inv_freq.iter().map(|f| h as f32 * f));
            angles.extend(self.inv_freq.iter().map(|f| w as f32 * f));
        }
        let cos_h: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin_h: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let cos = Tensor::from_slice(&cos_h, (n, half), &self.device)?;
        let sin = Tensor::from_slice(&sin_h, (n, half), &self.device)?;
        let full = [0, n];
        let mut inverse: Option<Tensor> = None;
        let mut deepstack = Vec::with_capacity(self.deepstack.len());
        for (b, blk) in self.blocks.iter().enumerate() {
            let cu: &[usize] = if blk.full_attention {
                &full
            } else {
                &win.cu_seqlens
            };
            x = if self.host {
                self.block_host(blk, &x, cu, &cos_h, &sin_h)?
            } else {
                self.block(blk, &x, cu, &cos, &sin)?
            };
            if let Some(k) = cfg.deepstack_blocks.iter().position(|&d| d == b) {
                if let Some(merger) = self.deepstack.get(k) {
                    deepstack.push((k, merger.forward(&x, cfg)?));
                }
            }
            if let Some(out) = block_outputs.as_deref_mut() {
                if identity {
                    out.push(x.clone());
                    continue;
                }
                let inv = match &inverse {
                    Some(i) => i.clone(),
                    None => {
                        let mut inv = vec![0u32; n];
                        for (i, &p) in perm.iter().enumerate() {
                            inv[p as usize] = i as u32;
                        }
                        let t = Tensor::from_vec(inv, n, &self.device)?;
                        inverse = Some(t.clone());
                        t
                    }
                };
                out.push(x.index_select(&inv, 0)?);
            }
        }
        let mut embeds = self.merger.forward(&x, cfg)?;
        // DeepStack features in the order of the mergers (a block may feed
        // more than one).
        deepstack.sort_by_key(|(k, _)| *k);
        let mut deepstack: Vec<Tensor> = deepstack.into_iter().map(|(_, f)| f).collect();
        if !identity {
            // Back from window order to the image's merged-token order.
            let mut back = vec![0u32; win.index.len()];
            for (i, &g) in win.index.iter().enumerate() {
                back[g] = i as u32;
            }
            let back = Tensor::from_vec(back, n / unit, &self.device)?;
            embeds = embeds.index_select(&back, 0)?;
            for f in &mut deepstack {
                *f = f.index_select(&back, 0)?;
            }
        }
        Ok(VisionOutput { embeds, deepstack })
    }

    /// [`VisionTower::block`] on Spillway's kernels (the tower on the
    /// CPU): the projections, the segment attention of
    /// [`super::attention`], norms, rotary embedding and activations on
    /// host vectors, no tensor per step.
    fn block_host(
        &self,
        blk: &VisionBlock,
        x: &Tensor,
        cu: &[usize],
        cos: &[f32],
        sin: &[f32],
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.cfg;
        let (n, nh, hd, width) = (x.dim(0)?, cfg.heads, cfg.head_dim(), cfg.hidden);
        let half = hd / 2;
        if cos.len() != n * half || sin.len() != n * half || nh * hd != width {
            return Err(ModelError::Format(format!(
                "rotary tables of {} for {n} patches of {nh}×{hd}",
                cos.len()
            )));
        }
        let mut xs = x
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut h = Vec::new();
        blk.norm1.forward_vec(&xs, cfg.eps, &mut h)?;
        let mut qkv = blk.qkv.forward_vec(&h, n)?;
        // Rotary embedding of q and k (halves rotated, as candle's `rope`).
        for (i, row) in qkv.chunks_exact_mut(3 * width).enumerate() {
            let (c, s) = (
                &cos[i * half..(i + 1) * half],
                &sin[i * half..(i + 1) * half],
            );
            for head in row[..2 * width].chunks_exact_mut(hd) {
                let (a, b) = head.split_at_mut(half);
                for j in 0..half {
                    let (x1, x2) = (a[j], b[j]);
                    a[j] = x1 * c[j] - x2 * s[j];
                    b[j] = x2 * c[j] + x1 * s[j];
                }
            }
        }
        let mut o = vec![0f32; n * width];
        super::attention::segment_attention(&qkv, n, nh, hd, cu, &mut o)
            .map_err(ModelError::Format)?;
        drop(qkv);
        crate::kernels::ops::add(&mut xs, &blk.proj.forward_vec(&o, n)?);
        drop(o);
        blk.norm2.forward_vec(&xs, cfg.eps, &mut h)?;
        let mut u = blk.up.forward_vec(&h, n)?;
        let a = match &blk.gate {
            Some(gate) => {
                let mut g = gate.forward_vec(&h, n)?;
                crate::kernels::ops::silu_mul(&mut g, &u);
                g
            }
            None => {
                crate::kernels::ops::gelu_tanh(&mut u, &mut h);
                u
            }
        };
        crate::kernels::ops::add(&mut xs, &blk.down.forward_vec(&a, n)?);
        Ok(Tensor::from_vec(xs, (n, width), x.device())?)
    }

    fn block(
        &self,
        blk: &VisionBlock,
        x: &Tensor,
        cu: &[usize],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.cfg;
        let (n, nh, hd) = (x.dim(0)?, cfg.heads, cfg.head_dim());
        let h = blk.norm1.forward(x, cfg.eps)?;
        let qkv = blk.qkv.forward(&h)?.reshape((n, 3, nh, hd))?;
        // heads × n × head_dim each.
        let part = |i: usize| -> Result<Tensor, ModelError> {
            Ok(qkv
                .narrow(1, i, 1)?
                .squeeze(1)?
                .transpose(0, 1)?
                .contiguous()?)
        };
        let rope = |t: Tensor| -> Result<Tensor, ModelError> {
            let y = candle_nn::rotary_emb::rope(&t.unsqueeze(0)?, cos, sin)?;
            Ok(y.squeeze(0)?)
        };
        let q = rope(part(0)?)?;
        let k = rope(part(1)?)?;
        let v = part(2)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outs = Vec::with_capacity(cu.len());
        for seg in cu.windows(2) {
            let (s, len) = (seg[0], seg[1] - seg[0]);
            let (ks, vs) = (k.narrow(1, s, len)?, v.narrow(1, s, len)?);
            let kt = ks.transpose(1, 2)?.contiguous()?;
            let chunk = (SCORES_BYTES / (4 * nh * len)).clamp(1, len);
            let mut c0 = 0;
            while c0 < len {
                let c = chunk.min(len - c0);
                let qs = q.narrow(1, s + c0, c)?.contiguous()?;
                let att = (qs.matmul(&kt)? * scale)?;
                let att = candle_nn::ops::softmax_last_dim(&att)?;
                outs.push(att.matmul(&vs.contiguous()?)?);
                c0 += c;
            }
        }
        // heads × n × head_dim → n × hidden.
        let o = Tensor::cat(&outs, 1)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((n, cfg.hidden))?;
        let x = (x + blk.proj.forward(&o)?)?;
        let h = blk.norm2.forward(&x, cfg.eps)?;
        let u = blk.up.forward(&h)?;
        let a = match &blk.gate {
            Some(gate) => (candle_nn::ops::silu(&gate.forward(&h)?)? * u)?,
            // GELU with the tanh approximation (`gelu_pytorch_tanh`).
            None => u.gelu()?,
        };
        let y = blk.down.forward(&a)?;
        Ok((x + y)?)
    }
}

/// The patches a `max_pixels` setting allows at most.
pub fn max_patches(max_pixels: usize, patch_size: usize) -> usize {
    max_pixels / (patch_size * patch_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_of_the_fixture_grid() {
        // 12×16 patches → 6×8 merged tokens, windows of 4×4 (padded to 8×12).
        let w = window_index([1, 12, 16], 2, 4);
        assert_eq!(w.cu_seqlens, vec![0, 64, 128, 160, 192]);
        assert_eq!(w.index.len(), 48);
        assert_eq!(&w.index[..5], &[0, 1, 2, 3, 8]);
        let mut sorted = w.index.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..48).collect::<Vec<_>>());
    }

    #[test]
    fn rot_ids_follow_merge_blocks() {
        let ids = rot_pos_ids([1, 4, 4], 2);
        assert_eq!(&ids[..6], &[[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3]]);
    }

    #[test]
    fn vision_config_defaults_fill_gaps() {
        let cfg = serde_json::json!({"vision_config": {"depth": 4, "hidden_size": 32, "num_heads": 2, "fullatt_block_indexes": [1, 3]}});
        let c = VisionConfig::from_config(&cfg, 64).unwrap();
        assert_eq!((c.out_hidden, c.window_size, c.patch_size), (64, 112, 14));
        assert_eq!(c.fullatt_blocks, vec![1, 3]);
        let bad = serde_json::json!({"vision_config": {"depth": 4, "fullatt_block_indexes": [9]}});
        assert!(VisionConfig::from_config(&bad, 64).is_err());
    }

    #[test]
    fn qwen3_vl_config_and_tensors() {
        let cfg: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/qwen3_vl_tiny/config.json"
        ))
        .unwrap();
        let c = VisionConfig::from_config(&cfg, 64).unwrap();
        assert_eq!(c.kind, TowerKind::Qwen3);
        assert_eq!(c.deepstack_blocks, vec![1, 2, 3]);
        assert_eq!((c.patch_size, c.position_side()), (16, 16));
        let names: Vec<String> = c.expected_shapes().into_iter().map(|(n, _)| n).collect();
        for want in [
            "v.patch_embd.bias",
            "v.position_embd.weight",
            "v.blk.4.ln2.bias",
            "v.deepstack.2.norm.bias",
            "v.merger.fc2.weight",
        ] {
            assert!(names.iter().any(|n| n == want), "{want}");
        }
        assert!(!names.iter().any(|n| n.contains("ffn_gate")));
        // A position table that is not a square is refused.
        let mut bad = cfg.clone();
        bad["vision_config"]["num_position_embeddings"] = 250.into();
        assert!(VisionConfig::from_config(&bad, 64).is_err());
        let mut bad = cfg;
        bad["vision_config"]["deepstack_visual_indexes"] = serde_json::json!([1, 9]);
        assert!(VisionConfig::from_config(&bad, 64).is_err());
    }
}
