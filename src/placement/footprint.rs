//! The footprint: exact bytes of every tensor in its final type, summed per
//! layer, plus the KV cache for the chosen context, activation scratch, the
//! vision tower and each device's runtime reserve — everything the planner
//! weighs against the budgets.
//!
//! Two sources give the same table: a GGUF's tensor table (the weights are at
//! hand), or a Hugging Face `config.json` with a quantization scheme (so a
//! user can ask whether a model fits before downloading it); the latter lists
//! the tensors a converter would write, with the types llama.cpp's scheme of
//! that name gives them. It never guesses a size by formula when the tensor
//! table is known.

use crate::kernels::kv::KvTypes;
use std::fmt;
use std::str::FromStr;

use crate::model::hparams::HParams;
use crate::weights::gguf::GgufFile;
use crate::weights::GgmlType;

/// Quantization scheme of weights converted at load (or planned from a
/// config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quant {
    /// 4-bit K-quants with llama.cpp's Q4_K_M mix: Q6_K for half of the
    /// `attn_v` / `ffn_down` tensors and for the output head.
    Q4KM,
    Q8_0,
    F16,
    BF16,
    /// As stored (config.json's `torch_dtype`).
    #[default]
    AsStored,
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quant::Q4KM => "q4_k_m",
            Quant::Q8_0 => "q8_0",
            Quant::F16 => "f16",
            Quant::BF16 => "bf16",
            Quant::AsStored => "none",
        })
    }
}

impl FromStr for Quant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "q4-k-m" | "q4-k" | "q4" | "4bit" | "4-bit" => Quant::Q4KM,
            "q8-0" | "q8" | "8bit" | "8-bit" => Quant::Q8_0,
            "f16" | "fp16" | "float16" | "16bit" | "16-bit" => Quant::F16,
            "bf16" | "bfloat16" => Quant::BF16,
            "none" | "as-stored" | "stored" => Quant::AsStored,
            other => {
                return Err(format!(
                    "unknown quantization '{other}' (q4_k_m, q8_0, f16, bf16, none)"
                ))
            }
        })
    }
}

/// llama.cpp's choice of layers that get more bits in its `_M` mixes: the
/// first and last eighth, and every third layer between.
fn more_bits(layer: usize, n_layer: usize) -> bool {
    let eighth = n_layer / 8;
    layer < eighth || layer >= 7 * n_layer / 8 || (layer - eighth) % 3 == 2
}

impl Quant {
    /// The type tensor `name` (of layer `layer`, with `row` values per row)
    /// gets under this scheme; `stored` is the checkpoint's own type. Vectors
    /// (norms, biases) stay f32, as every GGUF writer keeps them.
    pub fn tensor_type(
        self,
        name: &str,
        layer: Option<usize>,
        n_layer: usize,
        row: usize,
        is_vector: bool,
        stored: GgmlType,
    ) -> GgmlType {
        // Routers stay f32 as llama.cpp keeps them: a small error there
        // sends a token to another expert.
        // Qwen3-VL's learned position table is read row by row and mixed:
        // kept whole as well.
        if is_vector || name.contains("ffn_gate_inp") || name == "v.position_embd.weight" {
            return GgmlType::F32;
        }
        // The vision tower of a vision-language model keeps 8 bits under
        // the 4-bit scheme: it is small next to the language model and
        // its errors reach every image token.
        let vision = name.starts_with("v.");
        let want = match self {
            Quant::AsStored => stored,
            Quant::Q4KM | Quant::Q8_0 if vision => GgmlType::Q8_0,
            Quant::F16 => GgmlType::F16,
            Quant::BF16 => GgmlType::BF16,
            Quant::Q8_0 => GgmlType::Q8_0,
            Quant::Q4KM => {
                let mixed = name.contains("attn_v") || name.contains("ffn_down");
                if name.starts_with("output.")
                    || (mixed && layer.is_some_and(|i| more_bits(i, n_layer)))
                {
                    GgmlType::Q6K
                } else {
                    GgmlType::Q4K
                }
            }
        };
        // Rows that are not whole blocks fall back as llama.cpp does.
        if !(row as u64).is_multiple_of(want.block_elems()) {
            return match want {
                GgmlType::Q4K => GgmlType::Q5_0,
                GgmlType::Q6K => GgmlType::Q8_0,
                _ if row.is_multiple_of(32) => GgmlType::Q8_0,
                _ => GgmlType::F16,
            };
        }
        want
    }
}

/// One tensor's final size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorBytes {
    pub name: String,
    /// The block it belongs to; `None` for embeddings, final norm and head.
    pub layer: Option<usize>,
    pub ggml_type: GgmlType,
    pub elems: u64,
    pub bytes: u64,
}

/// Runtime reserve of a GPU: the CUDA context, cuBLAS workspace and the
/// loaded kernel modules, measured at ~300–450 MiB on recent drivers.
pub const GPU_RUNTIME_BYTES: u64 = 512 << 20;

/// Memory the process itself takes besides the model (code, libraries,
/// thread stacks), measured as the resident set before loading.
pub const CPU_RUNTIME_BYTES: u64 = 24 << 20;

/// Tokenizer memory per vocabulary entry (the token string, its id maps,
/// merges), measured on the test models' tokenizers.
pub const TOKENIZER_BYTES_PER_ENTRY: u64 = 200;

/// A mixture-of-experts model's experts: one expert's bytes and values in
/// each layer (its rows of the three stacked expert tensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertBytes {
    pub n_expert: usize,
    /// Experts a token runs in each layer.
    pub n_used: usize,
    pub bytes: Vec<u64>,
    pub elems: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Footprint {
    /// What the footprint is of (a file name or repo).
    pub name: String,
    pub hp: HParams,
    /// The context length the KV cache is sized for, in tokens.
    pub context: usize,
    /// Prompt tokens per forward pass (bounds the activation scratch).
    pub prompt_chunk: usize,
    pub tensors: Vec<TensorBytes>,
    /// Weight bytes of each block, from `tensors`.
    pub layer_bytes: Vec<u64>,
    /// Weight values of each block (for compute-time predictions).
    pub layer_elems: Vec<u64>,
    /// The experts of a mixture-of-experts model (their bytes are part of
    /// `layer_bytes`; the rest of a layer is its dense part).
    pub experts: Option<ExpertBytes>,
    /// Token embedding table (only the rows of a prompt's tokens are read,
    /// so it stays in RAM).
    pub embeddings_bytes: u64,
    /// Output head and final norm: read every token. With tied embeddings
    /// this is the table again (a GPU needs its own copy).
    pub head_bytes: u64,
    pub head_elems: u64,
    pub head_tied: bool,
    /// How the KV cache stores keys and values (see
    /// [`Footprint::set_kv_types`]).
    pub kv_types: KvTypes,
    /// Keys and values of each layer for `context` tokens in `kv_types` (a
    /// sliding-window layer's only for its window).
    pub kv_layer_bytes: Vec<u64>,
    /// The same on the GPU tier (which keeps block types as f16).
    pub kv_gpu_layer_bytes: Vec<u64>,
    /// Activations of a prompt chunk on the CPU (residual stream, q/k/v,
    /// MLP, logits, rotary tables, 8-bit activations).
    pub cpu_scratch_bytes: u64,
    /// The same on a GPU, with one KV head group's attention scores.
    pub gpu_scratch_bytes: u64,
    /// The vision tower's weights in memory and its activations for the
    /// largest image allowed (0 for text models).
    pub vision_bytes: u64,
    pub gpu_runtime_bytes: u64,
    /// Process and tokenizer.
    pub cpu_runtime_bytes: u64,
    /// Disk-tier layers are copies written to the offload folder (weights
    /// converted at load, or `offload.copy_disk_layers`), so they need free
    /// disk; otherwise they are read from the model file in place.
    pub disk_copy: bool,
}

/// The image bound plans assume when none is given: 1280 tokens an image,
/// the window's default.
pub const DEFAULT_MAX_IMAGE_PIXELS: usize = 1280 * 28 * 28;

impl Footprint {
    /// From a GGUF's tensor table, exactly as stored.
    pub fn from_gguf(g: &GgufFile, hp: &HParams, context: usize, prompt_chunk: usize) -> Self {
        let tensors = g
            .tensors
            .iter()
            .map(|t| TensorBytes {
                layer: layer_of(&t.name),
                name: t.name.clone(),
                ggml_type: t.ggml_type,
                elems: t.elem_count() as u64,
                bytes: t.size_bytes,
            })
            .collect();
        let name = g.path.file_name().map_or_else(
            || g.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Self::from_tensors(name, hp.clone(), tensors, context, prompt_chunk, 0)
    }

    /// From a Hugging Face `config.json` and the scheme the weights would be
    /// quantized with: the tensors a converter writes, each in its type.
    pub fn from_hf_config(
        name: String,
        config: &serde_json::Value,
        quant: Quant,
        context: usize,
        prompt_chunk: usize,
    ) -> Result<Self, crate::model::ModelError> {
        let hp = HParams::from_hf_config(config)?;
        let stored = crate::weights::convert::stored_type(config);
        // The text model's tensors exactly as the converter writes them;
        // the vision tower is counted with its activations below.
        let laid =
            crate::weights::convert::layout(&hp, config, quant, !hp.tied_embeddings, &|_| stored)?;
        let mut tensors = Vec::with_capacity(laid.len());
        for t in laid.into_iter().filter(|t| !t.name.starts_with("v.")) {
            tensors.push(TensorBytes {
                bytes: t.bytes()?,
                elems: t.elems(),
                name: t.name,
                layer: t.layer,
                ggml_type: t.ggml_type,
            });
        }
        let vision = vision_bytes(config, quant, stored, DEFAULT_MAX_IMAGE_PIXELS);
        let mut fp = Self::from_tensors(name, hp, tensors, context, prompt_chunk, vision);
        // Converted weights are read back from the quantized cache on disk.
        fp.disk_copy = true;
        Ok(fp)
    }

    fn from_tensors(
        name: String,
        hp: HParams,
        tensors: Vec<TensorBytes>,
        context: usize,
        prompt_chunk: usize,
        vision_bytes: u64,
    ) -> Self {
        let mut layer_bytes = vec![0u64; hp.n_layer];
        let mut layer_elems = vec![0u64; hp.n_layer];
        let (mut embeddings_bytes, mut head_bytes, mut head_elems) = (0u64, 0u64, 0u64);
        for t in &tensors {
            match t.layer {
                Some(i) if i < hp.n_layer => {
                    layer_bytes[i] = layer_bytes[i].saturating_add(t.bytes);
                    layer_elems[i] = layer_elems[i].saturating_add(t.elems);
                }
                Some(_) => {}
                None if t.name == "token_embd.weight" => embeddings_bytes = t.bytes,
                None if t.name.starts_with("output") => {
                    head_bytes = head_bytes.saturating_add(t.bytes);
                    head_elems = head_elems.saturating_add(t.elems);
                }
                None => {}
            }
        }
        let experts = hp.moe.map(|m| {
            let (mut bytes, mut elems) = (vec![0u64; hp.n_layer], vec![0u64; hp.n_layer]);
            for t in &tensors {
                if let Some(i) = t
                    .layer
                    .filter(|&i| i < hp.n_layer && t.name.contains("_exps."))
                {
                    bytes[i] += t.bytes / m.n_expert as u64;
                    elems[i] += t.elems / m.n_expert as u64;
                }
            }
            ExpertBytes {
                n_expert: m.n_expert,
                n_used: m.n_expert_used,
                bytes,
                elems,
            }
        });
        let head_tied = !tensors.iter().any(|t| t.name == "output.weight");
        if head_tied {
            head_bytes = head_bytes.saturating_add(embeddings_bytes);
            head_elems = head_elems.saturating_add((hp.n_vocab * hp.n_embd) as u64);
        }
        let kv_types = KvTypes::default();
        let kv_layer_bytes = (0..hp.n_layer)
            .map(|i| hp.kv_bytes(i, context, prompt_chunk, kv_types))
            .collect();
        let kv_gpu_layer_bytes = (0..hp.n_layer)
            .map(|i| hp.kv_bytes(i, context, prompt_chunk, kv_types.on_gpu()))
            .collect();
        let n = prompt_chunk as u64;
        let (d, qd, kvd, ff) = (
            hp.n_embd as u64,
            (hp.n_head * hp.head_dim) as u64,
            (hp.n_head_kv * hp.head_dim) as u64,
            hp.n_ff as u64,
        );
        // The forward pass's buffers (see model::transformer::Scratch), the
        // rotary tables, and one score row per compute thread.
        let activations = n * (2 * d + 2 * qd + 2 * kvd + 2 * ff) * 4 + n * ff.max(qd) * 2;
        let rotary = context as u64 * hp.head_dim as u64 * 4;
        let cpu_scratch_bytes =
            activations + rotary + hp.n_vocab as u64 * 4 + 64 * context as u64 * 4;
        let group = (hp.n_head / hp.n_head_kv) as u64;
        let gpu_scratch_bytes =
            activations * 2 + group * n * context as u64 * 4 * 2 + hp.n_vocab as u64 * 4;
        Footprint {
            name,
            context,
            prompt_chunk,
            tensors,
            layer_bytes,
            layer_elems,
            experts,
            embeddings_bytes,
            head_bytes,
            head_elems,
            head_tied,
            kv_types,
            kv_layer_bytes,
            kv_gpu_layer_bytes,
            cpu_scratch_bytes,
            gpu_scratch_bytes,
            vision_bytes,
            gpu_runtime_bytes: GPU_RUNTIME_BYTES,
            cpu_runtime_bytes: CPU_RUNTIME_BYTES + hp.n_vocab as u64 * TOKENIZER_BYTES_PER_ENTRY,
            disk_copy: false,
            hp,
        }
    }

    /// The same model with every tensor's bytes scaled so the weights
    /// total `bytes`: a file's exact size, known before its tensor table
    /// (a catalogue entry, a listing). The KV cache and scratch are
    /// unchanged.
    pub fn scaled_to(self, bytes: u64) -> Self {
        let total: u64 = self.tensors.iter().map(|t| t.bytes).sum();
        if total == 0 {
            return self;
        }
        let r = bytes as f64 / total as f64;
        let tensors = self
            .tensors
            .iter()
            .map(|t| TensorBytes {
                bytes: (t.bytes as f64 * r).round() as u64,
                ..t.clone()
            })
            .collect();
        let mut fp = Self::from_tensors(
            self.name,
            self.hp,
            tensors,
            self.context,
            self.prompt_chunk,
            self.vision_bytes,
        );
        fp.disk_copy = self.disk_copy;
        fp.with_kv_types(self.kv_types)
    }

    pub fn n_layer(&self) -> usize {
        self.layer_bytes.len()
    }

    /// Bytes of every weight (the model file's payload).
    pub fn weights_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum::<u64>() + self.vision_bytes
    }

    /// KV cache bytes of every layer for the context.
    pub fn kv_cache_bytes(&self) -> u64 {
        self.kv_layer_bytes.iter().sum()
    }

    /// KV cache bytes of layer `i` for the context.
    pub fn kv_bytes(&self, i: usize) -> u64 {
        self.kv_layer_bytes.get(i).copied().unwrap_or(0)
    }

    /// KV cache bytes of layer `i` for the context on the GPU tier.
    pub fn kv_gpu_bytes(&self, i: usize) -> u64 {
        self.kv_gpu_layer_bytes.get(i).copied().unwrap_or(0)
    }

    /// Sizes the KV cache for keys and values stored as `types` (default
    /// f16 for both).
    pub fn set_kv_types(&mut self, types: KvTypes) {
        let (hp, ctx, chunk) = (&self.hp, self.context, self.prompt_chunk);
        self.kv_types = types;
        self.kv_layer_bytes = (0..hp.n_layer)
            .map(|i| hp.kv_bytes(i, ctx, chunk, types))
            .collect();
        self.kv_gpu_layer_bytes = (0..hp.n_layer)
            .map(|i| hp.kv_bytes(i, ctx, chunk, types.on_gpu()))
            .collect();
    }

    /// The same footprint with the KV cache stored as `types`.
    pub fn with_kv_types(mut self, types: KvTypes) -> Self {
        self.set_kv_types(types);
        self
    }

    /// Bytes of one expert of layer `i` (0 for a dense model).
    pub fn expert_bytes(&self, i: usize) -> u64 {
        self.experts
            .as_ref()
            .and_then(|e| e.bytes.get(i).copied())
            .unwrap_or(0)
    }

    /// Bytes of layer `i` besides its experts: attention, norms, router.
    pub fn dense_bytes(&self, i: usize) -> u64 {
        let n = self.experts.as_ref().map_or(0, |e| e.n_expert as u64);
        self.layer_bytes[i].saturating_sub(n * self.expert_bytes(i))
    }

    /// Bytes and values of layer `i` one token runs: all of a dense layer,
    /// the dense part and the routed experts of a mixture-of-experts one.
    pub fn active(&self, i: usize) -> (u64, u64) {
        match &self.experts {
            Some(e) => {
                let k = e.n_used as u64;
                let all = e.n_expert as u64;
                (
                    self.dense_bytes(i) + k * e.bytes[i],
                    self.layer_elems[i].saturating_sub(all * e.elems[i]) + k * e.elems[i],
                )
            }
            None => (self.layer_bytes[i], self.layer_elems[i]),
        }
    }

    /// RAM the disk tier's read buffers take with `disk_layers` layers on
    /// disk (see [`super::store::staging_buffers`]). A mixture-of-experts
    /// layer on disk keeps its dense part in RAM and reads experts straight
    /// into buffers of their own: a group at a time, a layer's reads ahead,
    /// and those kept for reuse.
    pub fn disk_staging_bytes(&self, disk_layers: impl Iterator<Item = usize>) -> u64 {
        if self.experts.is_some() {
            let one = disk_layers.map(|i| self.expert_bytes(i)).max().unwrap_or(0);
            return one * super::experts::TRANSIENT_EXPERTS as u64;
        }
        let largest = disk_layers.map(|i| self.layer_bytes[i]).max().unwrap_or(0);
        if largest == 0 {
            return 0;
        }
        let span = largest.next_multiple_of(super::alloc::DIRECT_ALIGN as u64)
            + super::alloc::DIRECT_ALIGN as u64;
        span * super::store::staging_buffers(span as usize) as u64
    }
}

/// The block index of a GGUF tensor name (`blk.N.…`).
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Bytes of a Qwen2.5-VL vision tower as the converter writes it under
/// `quant` (each tensor in its type; 16-bit matrices are widened to f32 in
/// memory when kept as stored, for exact results), plus its activations
/// for an image of `max_pixels`.
pub fn vision_bytes(
    config: &serde_json::Value,
    quant: Quant,
    stored: GgmlType,
    max_pixels: usize,
) -> u64 {
    let Some(hp_embd) = config
        .get("text_config")
        .unwrap_or(config)
        .get("hidden_size")
        .and_then(serde_json::Value::as_u64)
    else {
        return 0;
    };
    let Ok(vc) = crate::vision::VisionConfig::from_config(config, hp_embd as usize) else {
        return 0;
    };
    let weights: u64 = vc
        .expected_shapes()
        .iter()
        .map(|(name, shape)| {
            let elems = shape.iter().map(|&d| d as u64).product::<u64>();
            let row = *shape.last().unwrap_or(&1);
            let t = quant.tensor_type(name, None, 0, row, shape.len() == 1, stored);
            let t = match (quant, t) {
                (Quant::AsStored, GgmlType::F16 | GgmlType::BF16) => GgmlType::F32,
                _ => t,
            };
            t.bytes_for(elems).unwrap_or(elems * 4)
        })
        .sum();
    let patches = crate::vision::tower::max_patches(max_pixels, vc.patch_size);
    weights + vc.activation_bytes(patches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_matches_llama_cpp_for_32_layers() {
        let picked: Vec<usize> = (0..32).filter(|&i| more_bits(i, 32)).collect();
        assert_eq!(
            picked,
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    #[test]
    fn quant_names_round_trip() {
        for q in [
            Quant::Q4KM,
            Quant::Q8_0,
            Quant::F16,
            Quant::BF16,
            Quant::AsStored,
        ] {
            assert_eq!(q.to_string().parse::<Quant>().unwrap(), q);
        }
        assert!("q3".parse::<Quant>().unwrap_err().contains("q4_k_m"));
    }

    #[test]
    fn layer_numbers_from_names() {
        assert_eq!(layer_of("blk.12.attn_q.weight"), Some(12));
        assert_eq!(layer_of("output.weight"), None);
    }
}
