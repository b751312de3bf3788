//! The Qwen2.5-VL vision tower on a candle device: patch embedding as one
//! matmul over 1176-value patches, 2-D rotary embedding, RMSNorm blocks
//! with a SiLU-gated MLP, window attention (full attention in the blocks
//! `fullatt_block_indexes` names), the 2×2 patch merger, and the window
//! permutation undone at the end.
//!
//! Images go through one at a time (attention never crosses images), and
//! attention runs segment by segment (a window, or the whole image) with
//! queries in chunks, so no N×N score matrix over all patches is ever built:
//! memory grows with the patches, not with their square.

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::model::device_block::Projection;
use crate::model::ModelError;

/// At most this many bytes of attention scores per query chunk.
const SCORES_BYTES: usize = 64 << 20;

/// `vision_config` of a Qwen2.5-VL checkpoint, with the defaults of the
/// released models for keys that re-saved configs leave out.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
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
        let depth = size("depth", 32)?;
        let fullatt_blocks = match v.get("fullatt_block_indexes") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|x| x as usize)
                        .filter(|&x| x < depth)
                        .ok_or_else(|| {
                            ModelError::Format(format!(
                                "vision_config.fullatt_block_indexes holds {x}, not a block index"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
            _ => vec![7, 15, 23, 31]
                .into_iter()
                .filter(|&i| i < depth)
                .collect(),
        };
        let c = VisionConfig {
            depth,
            hidden: size("hidden_size", 1280)?,
            intermediate: size("intermediate_size", 3420)?,
            heads: size("num_heads", 16)?,
            out_hidden: size("out_hidden_size", text_hidden)?,
            patch_size: size("patch_size", size("spatial_patch_size", 14)?)?,
            merge_size: size("spatial_merge_size", 2)?,
            temporal_patch_size: size("temporal_patch_size", 2)?,
            window_size: size("window_size", 112)?,
            fullatt_blocks,
            rope_theta: 10_000.0,
            eps: 1e-6,
        };
        if !c.hidden.is_multiple_of(c.heads) || !(c.hidden / c.heads).is_multiple_of(4) {
            return Err(ModelError::Format(format!(
                "vision_config: hidden size {} and {} heads do not give a head size divisible by 4",
                c.hidden, c.heads
            )));
        }
        if !c.window_size.is_multiple_of(c.patch_size * c.merge_size) {
            return Err(ModelError::Format(format!(
                "vision_config: window size {} is not a multiple of {}",
                c.window_size,
                c.patch_size * c.merge_size
            )));
        }
        Ok(c)
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
        let mut v = vec![(
            "v.patch_embd.weight".to_string(),
            vec![h, self.patch_values()],
        )];
        for b in 0..self.depth {
            let p = |s: &str| format!("v.blk.{b}.{s}");
            v.extend([
                (p("ln1.weight"), vec![h]),
                (p("attn_qkv.weight"), vec![3 * h, h]),
                (p("attn_qkv.bias"), vec![3 * h]),
                (p("attn_out.weight"), vec![h, h]),
                (p("attn_out.bias"), vec![h]),
                (p("ln2.weight"), vec![h]),
                (p("ffn_gate.weight"), vec![i, h]),
                (p("ffn_gate.bias"), vec![i]),
                (p("ffn_up.weight"), vec![i, h]),
                (p("ffn_up.bias"), vec![i]),
                (p("ffn_down.weight"), vec![h, i]),
                (p("ffn_down.bias"), vec![h]),
            ]);
        }
        v.extend([
            ("v.merger.norm.weight".to_string(), vec![h]),
            ("v.merger.fc1.weight".to_string(), vec![merged, merged]),
            ("v.merger.fc1.bias".to_string(), vec![merged]),
            (
                "v.merger.fc2.weight".to_string(),
                vec![self.out_hidden, merged],
            ),
            ("v.merger.fc2.bias".to_string(), vec![self.out_hidden]),
        ]);
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

struct VisionBlock {
    norm1: Tensor,
    qkv: Projection,
    proj: Projection,
    norm2: Tensor,
    gate: Projection,
    up: Projection,
    down: Projection,
    full_attention: bool,
}

/// The loaded tower.
pub struct VisionTower {
    pub cfg: VisionConfig,
    patch_embed: Projection,
    blocks: Vec<VisionBlock>,
    merger_norm: Tensor,
    fc1: Projection,
    fc2: Projection,
    device: Device,
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
    pub fn load(
        cfg: VisionConfig,
        get: &mut TensorFn<'_>,
        device: &Device,
        half_weights: bool,
    ) -> Result<Self, ModelError> {
        let mut bytes = 0u64;
        let mut proj = |get: &mut TensorFn<'_>, name: &str| -> Result<Projection, ModelError> {
            let w = get(&format!("{name}.weight"))?;
            // 16-bit weights widened to f32 take twice their stored size.
            let widened = !half_weights
                && matches!(
                    w.dtype(),
                    candle_core::quantized::GgmlDType::F16
                        | candle_core::quantized::GgmlDType::BF16
                );
            bytes += w.storage_size_in_bytes() as u64 * if widened { 2 } else { 1 };
            let b = match get(&format!("{name}.bias")) {
                Ok(b) => {
                    bytes += b.storage_size_in_bytes() as u64;
                    Some(crate::model::transformer::to_f32_vec(&b)?)
                }
                // The patch embedding has no bias.
                Err(_) if name == "v.patch_embd" => None,
                Err(e) => return Err(e),
            };
            Projection::new(w, b, device, half_weights)
        };
        let patch_embed = proj(get, "v.patch_embd")?;
        let mut blocks = Vec::with_capacity(cfg.depth);
        for b in 0..cfg.depth {
            let p = |s: &str| format!("v.blk.{b}.{s}");
            blocks.push(VisionBlock {
                norm1: f32_tensor(get(&p("ln1.weight"))?, device)?,
                qkv: proj(get, &p("attn_qkv"))?,
                proj: proj(get, &p("attn_out"))?,
                norm2: f32_tensor(get(&p("ln2.weight"))?, device)?,
                gate: proj(get, &p("ffn_gate"))?,
                up: proj(get, &p("ffn_up"))?,
                down: proj(get, &p("ffn_down"))?,
                full_attention: cfg.fullatt_blocks.contains(&b),
            });
        }
        let merger_norm = f32_tensor(get("v.merger.norm.weight")?, device)?;
        let fc1 = proj(get, "v.merger.fc1")?;
        let fc2 = proj(get, "v.merger.fc2")?;
        let quarter = cfg.head_dim() / 4;
        let inv_freq = (0..quarter)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / (2 * quarter) as f32))
            .collect();
        Ok(VisionTower {
            cfg,
            patch_embed,
            blocks,
            merger_norm,
            fc1,
            fc2,
            device: device.clone(),
            inv_freq,
            bytes,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
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
        mut block_outputs: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor, ModelError> {
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
        let x = self.patch_embeds(pixels, n)?;
        let ws = cfg.window_size / cfg.patch_size / m;
        let win = window_index(grid_thw, m, ws);
        // Patch order inside the windows: each merged token's 2×2 patches
        // stay together.
        let perm: Vec<u32> = win
            .index
            .iter()
            .flat_map(|&g| (0..unit).map(move |j| (g * unit + j) as u32))
            .collect();
        let perm_t = Tensor::from_vec(perm.clone(), n, &self.device)?;
        let mut x = x.index_select(&perm_t, 0)?;
        // Rotary angles per patch: cat(h·inv_freq, w·inv_freq), duplicated.
        let ids = rot_pos_ids(grid_thw, m);
        let half = hd / 2;
        let mut angles = Vec::with_capacity(n * half);
        for &p in &perm {
            let [h, w] = ids[p as usize];
            angles.extend(self.inv_freq.iter().map(|f| h as f32 * f));
            angles.extend(self.inv_freq.iter().map(|f| w as f32 * f));
        }
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let cos = Tensor::from_vec(cos, (n, half), &self.device)?;
        let sin = Tensor::from_vec(sin, (n, half), &self.device)?;
        let full = [0, n];
        let mut inverse: Option<Tensor> = None;
        for blk in &self.blocks {
            let cu: &[usize] = if blk.full_attention {
                &full
            } else {
                &win.cu_seqlens
            };
            x = self.block(blk, &x, cu, &cos, &sin)?;
            if let Some(out) = block_outputs.as_deref_mut() {
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
        let h = candle_nn::ops::rms_norm(&x, &self.merger_norm, cfg.eps)?;
        let h = h.reshape((n / unit, unit * cfg.hidden))?;
        let h = self.fc1.forward(&h)?.gelu_erf()?;
        let h = self.fc2.forward(&h)?;
        // Back from window order to the image's merged-token order.
        let mut back = vec![0u32; win.index.len()];
        for (i, &g) in win.index.iter().enumerate() {
            back[g] = i as u32;
        }
        let back = Tensor::from_vec(back, n / unit, &self.device)?;
        Ok(h.index_select(&back, 0)?)
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
        let h = candle_nn::ops::rms_norm(x, &blk.norm1, cfg.eps)?;
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
        let h = candle_nn::ops::rms_norm(&x, &blk.norm2, cfg.eps)?;
        let g = candle_nn::ops::silu(&blk.gate.forward(&h)?)?;
        let u = blk.up.forward(&h)?;
        let y = blk.down.forward(&(g * u)?)?;
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
}
