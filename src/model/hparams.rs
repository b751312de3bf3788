//! Typed hyper-parameters read from GGUF metadata, with the architecture
//! check. Nothing past this point reads metadata keys as strings.

use std::fmt;

use crate::weights::gguf::{GgufFile, Value};

use super::ModelError;

/// Architectures whose forward pass Spillway implements. Mixture-of-experts
/// is a property of the hyper-parameters ([`HParams::moe`]), not an
/// architecture: `qwen3moe` is Qwen3 with experts, Mixtral is Llama with
/// experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama (1–3.x), Mistral, Mixtral, SmolLM and other `llama`-tagged GGUFs.
    Llama,
    Qwen2,
    /// Qwen3 and Qwen3-MoE: per-head q/k RMSNorm, no biases.
    Qwen3,
    /// Gemma 3 (text): (1 + w) norms stored shifted, four norms a layer,
    /// GELU-tanh, scaled embeddings, sliding-window layers.
    Gemma3,
}

impl Arch {
    pub const SUPPORTED: &'static str = "llama (Llama 1-3.x, Mistral, Mixtral, SmolLM), mistral, qwen2, qwen2vl (Qwen2.5-VL, RoboBrain 2.0), qwen3, qwen3moe, qwen3vl (Qwen3-VL, RoboBrain 2.5), gemma3";

    fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "llama" | "mistral" => Some(Arch::Llama),
            "qwen2" | "qwen2vl" => Some(Arch::Qwen2),
            "qwen3" | "qwen3moe" | "qwen3vl" => Some(Arch::Qwen3),
            "gemma3" => Some(Arch::Gemma3),
            _ => None,
        }
    }

    /// The GGUF architecture name for these hyper-parameters.
    pub fn gguf_name(hp: &HParams) -> &'static str {
        match hp.arch {
            Arch::Llama => "llama",
            Arch::Qwen2 if hp.is_multimodal() => "qwen2vl",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 if hp.moe.is_some() => "qwen3moe",
            Arch::Qwen3 if hp.is_multimodal() => "qwen3vl",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        })
    }
}

/// A mixture-of-experts feed-forward block: a router picks `n_expert_used`
/// of `n_expert` SwiGLU experts per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moe {
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Each expert's hidden width.
    pub n_ff_exp: usize,
    /// The picked experts' probabilities are renormalised to sum to one
    /// (Qwen3-MoE's `norm_topk_prob`, Mixtral).
    pub norm_topk: bool,
}

/// At most this many experts a layer (the largest of 2026 have 512).
pub const MAX_EXPERTS: usize = 4096;

/// Llama 3's rotary scaling (`rope_scaling.rope_type = "llama3"`): the
/// divisor of each rotary frequency, as llama.cpp stores them in
/// `rope_freqs.weight`.
pub fn llama3_rope_factors(
    base: f32,
    head_dim: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_context: f64,
) -> Vec<f32> {
    let low_wavelen = original_context / low_freq_factor;
    let high_wavelen = original_context / high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (base as f64).powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let smooth = (original_context / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

/// How rotary embeddings pair up dimensions. llama.cpp's converter permutes
/// the Q/K rows of llama-family models so that adjacent pairs rotate together
/// (GPT-J style); Qwen2 keeps Hugging Face's halves (GPT-NeoX style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Interleaved,
    Halves,
}

/// What a size read from a file can honestly be. The largest models of 2026
/// stay far inside these (126 layers, 16k hidden, 262k vocabulary, 10M
/// context); a larger value is a corrupt or hand-edited file, refused before
/// it sizes a table, a loop or an allocation.
pub mod limits {
    pub const LAYERS: usize = 1024;
    pub const EMBEDDING: usize = 1 << 17;
    pub const FEED_FORWARD: usize = 1 << 20;
    pub const HEADS: usize = 1024;
    pub const HEAD_DIM: usize = 1024;
    pub const VOCAB: usize = 1 << 23;
    pub const CONTEXT: usize = 1 << 24;
    pub const EXPERTS: usize = super::MAX_EXPERTS;
}

/// The context a model gets when the user names none: its training context,
/// but no more than this (a 128k-token f32 KV cache of an 8B model is 16 GiB,
/// which would push layers out of memory for room a chat rarely uses).
pub const DEFAULT_CONTEXT: usize = 32_768;

/// The size `v` read from key `what`, when it is a positive integer no
/// larger than `max`.
fn bounded(what: &str, v: Option<u64>, max: usize) -> Result<usize, ModelError> {
    match v {
        Some(n) if n > 0 && n <= max as u64 => Ok(n as usize),
        Some(n) => Err(ModelError::Format(format!(
            "{what} = {n} is not a plausible size (at most {max})"
        ))),
        None => Err(ModelError::Format(format!(
            "{what} is missing or not a size"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    pub arch: Arch,
    /// The architecture string as the file spells it.
    pub arch_name: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    /// The context the model was trained for.
    pub context_length: usize,
    pub rope_freq_base: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    pub has_qkv_bias: bool,
    /// The output head shares the token embedding.
    pub tied_embeddings: bool,
    /// Multimodal rotary embedding (Qwen2.5-VL): how many of the
    /// `head_dim/2` frequencies take their angle from the temporal, height
    /// and width position.
    pub mrope_sections: Option<[usize; 3]>,
    /// Qwen3-VL's interleaved M-RoPE: frequency `j` takes the height
    /// position when `j % 3 == 1` (within `3 × sections[1]`), the width
    /// when `j % 3 == 2` (within `3 × sections[2]`), else the temporal one,
    /// instead of Qwen2.5-VL's contiguous [t | h | w] runs.
    pub mrope_interleaved: bool,
    /// RMSNorm of each query and key head before the rotation (Qwen3,
    /// Gemma 3).
    pub qk_norm: bool,
    /// The attention score scale; `None` is `1/√head_dim`.
    pub attn_scale: Option<f32>,
    /// Sliding-window attention: a local layer's query sees itself and the
    /// `sliding_window - 1` keys before it. 0: none.
    pub sliding_window: usize,
    /// Which layers are local (sliding); empty when none are.
    pub sliding: Vec<bool>,
    /// The rotary base of the local layers.
    pub rope_freq_base_swa: f32,
    /// Linear rotary scaling of the global layers (positions × this).
    pub rope_freq_scale: f32,
    /// Divisors of the rotary frequencies (Llama 3's scaling), from
    /// `rope_freqs.weight` or computed from config.json.
    pub rope_freq_factors: Option<Vec<f32>>,
    pub moe: Option<Moe>,
}

impl HParams {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let arch_name = g
            .architecture()
            .ok_or_else(|| ModelError::Format("metadata has no general.architecture".into()))?
            .to_string();
        let arch = Arch::from_gguf_name(&arch_name).ok_or_else(|| ModelError::Unsupported {
            arch: arch_name.clone(),
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str, max: usize| -> Result<usize, ModelError> {
            let full = key(k);
            let v = g
                .get(&full)
                .ok_or_else(|| ModelError::Format(format!("metadata key {full} is missing")))?;
            bounded(&format!("metadata {full}"), v.as_u64(), max)
        };
        let opt_f32 = |k: &str, default: f32| -> f32 {
            g.get(&key(k))
                .and_then(Value::as_f64)
                .map(|v| v as f32)
                .unwrap_or(default)
        };
        let n_layer = req("block_count", limits::LAYERS)?;
        let n_embd = req("embedding_length", limits::EMBEDDING)?;
        let n_ff = req("feed_forward_length", limits::FEED_FORWARD)?;
        let n_head = req("attention.head_count", limits::HEADS)?;
        let n_head_kv = if g.get(&key("attention.head_count_kv")).is_some() {
            req("attention.head_count_kv", limits::HEADS)?
        } else {
            n_head
        };
        let head_dim = if g.get(&key("attention.key_length")).is_some() {
            req("attention.key_length", limits::HEAD_DIM)?
        } else {
            n_embd / n_head
        };
        if head_dim == 0 || head_dim > limits::HEAD_DIM {
            return Err(ModelError::Format(format!(
                "head size {head_dim} is not plausible"
            )));
        }
        if n_head % n_head_kv != 0 {
            return Err(ModelError::Format(format!(
                "{n_head} attention heads are not a multiple of {n_head_kv} KV heads"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(ModelError::Format(format!("head size {head_dim} is odd")));
        }
        if let Some(rope_dim) = g.get(&key("rope.dimension_count")).and_then(Value::as_u64) {
            if rope_dim as usize != head_dim {
                return Err(ModelError::Format(format!(
                    "partial rotary embeddings ({rope_dim} of {head_dim} dims) are not supported"
                )));
            }
        }
        let context_length = req("context_length", limits::CONTEXT)?;
        check_block_count(g, n_layer)?;
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::Format("tensor token_embd.weight is missing".into()))?;
        let n_vocab = match embd.shape.as_slice() {
            [v, d] if *d == n_embd && *v <= limits::VOCAB => *v,
            other => {
                return Err(ModelError::Format(format!(
                    "token_embd.weight has shape {other:?}, expected [vocab, {n_embd}]"
                )))
            }
        };
        let mrope_sections = match g
            .get(&key("rope.dimension_sections"))
            .and_then(Value::as_array)
        {
            Some(a) => Some(mrope_sections(
                a.iter().filter_map(Value::as_u64).map(|v| v as usize),
                head_dim,
            )?),
            None if arch_name == "qwen2vl" || arch_name == "qwen3vl" => {
                return Err(ModelError::Format(format!(
                    "{arch_name} model without rope.dimension_sections"
                )))
            }
            None => None,
        };
        let moe = match g.get(&key("expert_count")).and_then(Value::as_u64) {
            None | Some(0) => None,
            Some(_) => {
                let n_expert = req("expert_count", limits::EXPERTS)?;
                let n_expert_used = req("expert_used_count", n_expert)?;
                let n_ff_exp = if g.get(&key("expert_feed_forward_length")).is_some() {
                    req("expert_feed_forward_length", limits::FEED_FORWARD)?
                } else {
                    n_ff
                };
                if let Some(f) = g.get(&key("expert_gating_func")).and_then(Value::as_u64) {
                    if f != 1 {
                        return Err(ModelError::Format(format!(
                            "expert gating function {f} is not supported (only softmax)"
                        )));
                    }
                }
                if g.get(&key("expert_shared_count"))
                    .and_then(Value::as_u64)
                    .is_some_and(|n| n > 0)
                {
                    return Err(ModelError::Format(
                        "shared experts are not supported yet".into(),
                    ));
                }
                Some(Moe {
                    n_expert,
                    n_expert_used,
                    n_ff_exp,
                    norm_topk: g
                        .get(&key("expert_weights_norm"))
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                })
            }
        };
        let gemma = arch == Arch::Gemma3;
        let sliding_window = match g.get(&key("attention.sliding_window")) {
            Some(v) if gemma => bounded("attention.sliding_window", v.as_u64(), limits::CONTEXT)?,
            _ => 0,
        };
        let sliding = if sliding_window > 0 {
            match g.get(&key("attention.sliding_window_pattern")) {
                Some(Value::Array(a)) => {
                    let v: Vec<bool> = a.iter().filter_map(Value::as_bool).collect();
                    if v.len() != n_layer {
                        return Err(ModelError::Format(format!(
                            "the sliding-window pattern lists {} layers of {n_layer}",
                            v.len()
                        )));
                    }
                    v
                }
                Some(v) => sliding_pattern(
                    n_layer,
                    bounded(
                        "attention.sliding_window_pattern",
                        v.as_u64(),
                        limits::LAYERS,
                    )?,
                ),
                None => sliding_pattern(n_layer, 6),
            }
        } else {
            Vec::new()
        };
        let rope_freq_scale = match g.get(&key("rope.scaling.type")).and_then(Value::as_str) {
            Some("linear") => {
                let f = opt_f32("rope.scaling.factor", 1.0);
                if !(f.is_finite() && f >= 1.0) {
                    return Err(ModelError::Format(format!(
                        "rope scaling factor {f} is not plausible"
                    )));
                }
                1.0 / f
            }
            _ => 1.0,
        };
        let attn_scale = match g.get(&key("attention.scale")).and_then(Value::as_f64) {
            Some(v) if v.is_finite() && v > 0.0 => Some(v as f32),
            Some(v) => {
                return Err(ModelError::Format(format!(
                    "attention scale {v} is not plausible"
                )))
            }
            // Gemma 3 27B scales by its hidden size per head, the others
            // by the head size (as llama.cpp does).
            None if gemma && n_layer == 62 => Some(1.0 / ((n_embd / n_head) as f32).sqrt()),
            None => None,
        };
        Ok(HParams {
            arch,
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            context_length,
            rope_freq_base: opt_f32("rope.freq_base", 10_000.0),
            rope_style: match arch {
                Arch::Llama => RopeStyle::Interleaved,
                Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => RopeStyle::Halves,
            },
            rms_eps: opt_f32("attention.layer_norm_rms_epsilon", 1e-5),
            has_qkv_bias: g.tensor("blk.0.attn_q.bias").is_some(),
            tied_embeddings: g.tensor("output.weight").is_none(),
            mrope_sections,
            qk_norm: g.tensor("blk.0.attn_q_norm.weight").is_some(),
            attn_scale,
            sliding_window,
            sliding,
            rope_freq_base_swa: opt_f32("rope.freq_base_swa", 10_000.0),
            rope_freq_scale,
            rope_freq_factors: None,
            moe,
            // llama.cpp's qwen3vl uses interleaved M-RoPE.
            mrope_interleaved: arch_name == "qwen3vl",
            arch_name,
        })
    }

    /// Hyper-parameters from a Hugging Face `config.json` (flat, or with the
    /// language model under `text_config` as multimodal models write it).
    /// Architectures are named by `model_type`: `llama`, `mistral`, `qwen2`,
    /// and the text halves of `qwen2_5_vl` and `qwen3_vl`.
    pub fn from_hf_config(config: &serde_json::Value) -> Result<Self, ModelError> {
        let top = config;
        let text = config.get("text_config").unwrap_or(config);
        let model_type = top
            .get("model_type")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| ModelError::Format("config.json has no model_type".into()))?;
        let arch = match model_type {
            "llama" | "mistral" | "mixtral" => Arch::Llama,
            "qwen2" | "qwen2_5_vl" => Arch::Qwen2,
            "qwen3" | "qwen3_moe" | "qwen3_vl" => Arch::Qwen3,
            "gemma3" | "gemma3_text" => Arch::Gemma3,
            other => {
                return Err(ModelError::Unsupported {
                    arch: other.to_string(),
                })
            }
        };
        // A key of the text model, falling back to the top level (re-saved
        // configs move keys between the two).
        let get = |k: &str| text.get(k).or_else(|| top.get(k));
        let size = |k: &str, max: usize| -> Result<usize, ModelError> {
            bounded(
                &format!("config.json: {k}"),
                get(k).and_then(serde_json::Value::as_u64),
                max,
            )
        };
        let float = |k: &str, default: f64| {
            get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(default)
        };
        let n_embd = size("hidden_size", limits::EMBEDDING)?;
        let n_head = size("num_attention_heads", limits::HEADS)?;
        let n_head_kv = if get("num_key_value_heads").is_some_and(|v| !v.is_null()) {
            size("num_key_value_heads", limits::HEADS)?
        } else {
            n_head
        };
        let head_dim = if get("head_dim").is_some_and(|v| !v.is_null()) {
            size("head_dim", limits::HEAD_DIM)?
        } else {
            n_embd / n_head
        };
        if n_head % n_head_kv != 0 || head_dim % 2 != 0 || head_dim == 0 {
            return Err(ModelError::Format(format!(
                "config.json: {n_head} heads, {n_head_kv} KV heads and head size {head_dim} do not fit together"
            )));
        }
        let rope_param = |key: &str| {
            ["rope_scaling", "rope_parameters"]
                .iter()
                .find_map(|k| get(k).and_then(|r| r.get(key)))
        };
        let vl = matches!(model_type, "qwen2_5_vl" | "qwen3_vl");
        let mrope_interleaved = model_type == "qwen3_vl"
            && rope_param("mrope_interleaved")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true);
        let mrope_sections = if vl {
            let listed = rope_param("mrope_section").and_then(serde_json::Value::as_array);
            Some(match listed {
                Some(a) => mrope_sections(
                    a.iter()
                        .filter_map(serde_json::Value::as_u64)
                        .map(|v| v as usize),
                    head_dim,
                )?,
                // The released models' sections for their 128-wide heads.
                None if model_type == "qwen3_vl" => {
                    mrope_sections([24, 20, 20].into_iter(), head_dim)?
                }
                None => mrope_sections([16, 24, 24].into_iter(), head_dim)?,
            })
        } else {
            None
        };
        let n_layer = size("num_hidden_layers", limits::LAYERS)?;
        let n_ff = size("intermediate_size", limits::FEED_FORWARD)?;
        let gemma = arch == Arch::Gemma3;
        let flag = |k: &str| get(k).and_then(serde_json::Value::as_bool);
        let null_or_missing = |k: &str| get(k).is_none_or(serde_json::Value::is_null);
        if arch == Arch::Qwen3 && flag("attention_bias") == Some(true) {
            return Err(ModelError::Format(
                "config.json: Qwen3 with attention biases is not supported".into(),
            ));
        }
        if gemma
            && !(null_or_missing("final_logit_softcapping")
                && null_or_missing("attn_logit_softcapping"))
        {
            return Err(ModelError::Format(
                "config.json: logit soft-capping (Gemma 2) is not supported".into(),
            ));
        }
        let moe = match model_type {
            "qwen3_moe" => {
                let dense_layers = get("mlp_only_layers")
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|a| !a.is_empty());
                let step = get("decoder_sparse_step")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(1);
                if dense_layers || step != 1 {
                    return Err(ModelError::Format(
                        "config.json: Qwen3-MoE with dense layers between the sparse ones is not supported".into(),
                    ));
                }
                let n_expert = size("num_experts", limits::EXPERTS)?;
                Some(Moe {
                    n_expert,
                    n_expert_used: size("num_experts_per_tok", n_expert)?,
                    n_ff_exp: size("moe_intermediate_size", limits::FEED_FORWARD)?,
                    norm_topk: flag("norm_topk_prob").unwrap_or(false),
                })
            }
            "mixtral" => {
                let n_expert = size("num_local_experts", limits::EXPERTS)?;
                Some(Moe {
                    n_expert,
                    n_expert_used: size("num_experts_per_tok", n_expert)?,
                    n_ff_exp: n_ff,
                    norm_topk: true,
                })
            }
            _ => None,
        };
        // Rotary parameters: flat (`rope_theta`, `rope_scaling`), or
        // transformers 5's `rope_parameters`, per attention kind for Gemma.
        let params = get("rope_parameters");
        let global = params
            .and_then(|p| p.get("full_attention"))
            .or(params)
            .or_else(|| get("rope_scaling").filter(|v| !v.is_null()));
        let rope_freq_base = get("rope_theta")
            .or_else(|| global.and_then(|r| r.get("rope_theta")))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(10_000.0) as f32;
        let rope_freq_base_swa = get("rope_local_base_freq")
            .or_else(|| {
                params
                    .and_then(|p| p.get("sliding_attention"))
                    .and_then(|r| r.get("rope_theta"))
            })
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(10_000.0) as f32;
        let scaling = get("rope_scaling")
            .filter(|v| !v.is_null())
            .or(global)
            .filter(|r| r.get("rope_type").or_else(|| r.get("type")).is_some());
        let scaling_kind = scaling
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("default");
        let scaling_num = |k: &str, default: f64| {
            scaling
                .and_then(|r| r.get(k))
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(default)
        };
        let factor = scaling_num("factor", 1.0);
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(ModelError::Format(format!(
                "config.json: rope scaling factor {factor} is not plausible"
            )));
        }
        let (mut rope_freq_scale, mut rope_freq_factors) = (1.0f32, None);
        match scaling_kind {
            // Qwen2.5-VL's multimodal sections are read above.
            "default" | "mrope" => {}
            "linear" => rope_freq_scale = (1.0 / factor) as f32,
            "llama3" => {
                let (low, high) = (
                    scaling_num("low_freq_factor", 1.0),
                    scaling_num("high_freq_factor", 4.0),
                );
                let original = scaling_num("original_max_position_embeddings", 8192.0);
                if !(high > low && low > 0.0 && original >= 1.0) {
                    return Err(ModelError::Format(format!(
                        "config.json: llama3 rope scaling with low_freq_factor {low}, high_freq_factor {high}, original context {original} is not plausible"
                    )));
                }
                rope_freq_factors = Some(llama3_rope_factors(
                    rope_freq_base,
                    head_dim,
                    factor,
                    low,
                    high,
                    original,
                ));
            }
            other => {
                return Err(ModelError::Format(format!(
                    "config.json: rope scaling of type {other} is not supported"
                )))
            }
        }
        let (sliding_window, sliding) = if gemma {
            let window = size("sliding_window", limits::CONTEXT)?;
            let types = get("layer_types").and_then(serde_json::Value::as_array);
            let sliding = match types {
                Some(t) => {
                    let v: Vec<bool> = t
                        .iter()
                        .map(|x| x.as_str() == Some("sliding_attention"))
                        .collect();
                    if v.len() != n_layer {
                        return Err(ModelError::Format(format!(
                            "config.json: layer_types lists {} layers of {n_layer}",
                            v.len()
                        )));
                    }
                    v
                }
                None => {
                    let pattern = get("sliding_window_pattern")
                        .or_else(|| get("_sliding_window_pattern"))
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(6);
                    if pattern == 0 || pattern > limits::LAYERS as u64 {
                        return Err(ModelError::Format(format!(
                            "config.json: sliding_window_pattern {pattern} is not plausible"
                        )));
                    }
                    sliding_pattern(n_layer, pattern as usize)
                }
            };
            (window, sliding)
        } else {
            (0, Vec::new())
        };
        let attn_scale = if gemma {
            let s = float("query_pre_attn_scalar", head_dim as f64);
            if !(s.is_finite() && s > 0.0) {
                return Err(ModelError::Format(format!(
                    "config.json: query_pre_attn_scalar {s} is not plausible"
                )));
            }
            Some((1.0 / s.sqrt()) as f32)
        } else {
            None
        };
        Ok(HParams {
            arch,
            arch_name: model_type.to_string(),
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab: size("vocab_size", limits::VOCAB)?,
            context_length: size("max_position_embeddings", limits::CONTEXT)?,
            rope_freq_base,
            rope_style: RopeStyle::Halves,
            rms_eps: float("rms_norm_eps", 1e-6) as f32,
            has_qkv_bias: arch == Arch::Qwen2,
            // Gemma ties its head to the embeddings unless told otherwise.
            tied_embeddings: flag("tie_word_embeddings").unwrap_or(gemma),
            mrope_sections,
            mrope_interleaved,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            attn_scale,
            sliding_window,
            sliding,
            rope_freq_base_swa,
            rope_freq_scale,
            rope_freq_factors,
            moe,
        })
    }

    /// The context to plan for: the one the user asked for (never more than
    /// the model was trained for), else the training context capped at
    /// [`DEFAULT_CONTEXT`]. Rotary tables and the KV cache are sized by this,
    /// never by the file's header alone.
    pub fn context_for(&self, requested: Option<usize>) -> Result<usize, ModelError> {
        match requested {
            Some(0) => Err(ModelError::Invalid(
                "the context length must be positive".into(),
            )),
            Some(n) if n > self.context_length => Err(ModelError::Invalid(format!(
                "a context of {n} tokens exceeds the {} this model was trained for",
                self.context_length
            ))),
            Some(n) => Ok(n),
            None => Ok(self.context_length.min(DEFAULT_CONTEXT)),
        }
    }

    /// Norms after the attention and after the MLP too (Gemma's sandwich).
    pub fn post_norms(&self) -> bool {
        self.arch == Arch::Gemma3
    }

    /// GELU (tanh approximation) gates the MLP instead of SiLU (Gemma).
    pub fn gelu(&self) -> bool {
        self.arch == Arch::Gemma3
    }

    /// Token embeddings are multiplied by this (Gemma: √n_embd).
    pub fn embed_scale(&self) -> Option<f32> {
        (self.arch == Arch::Gemma3).then(|| (self.n_embd as f32).sqrt())
    }

    /// Whether layer `i` attends to a sliding window only.
    pub fn is_sliding(&self, i: usize) -> bool {
        self.sliding_window > 0 && self.sliding.get(i).copied().unwrap_or(false)
    }

    /// Positions layer `i`'s KV cache holds at a `context`-token context:
    /// all of them, or for a sliding layer the window plus one prompt
    /// chunk and a chunk to roll back into (see [`super::kv_cache`]).
    pub fn kv_positions(&self, i: usize, context: usize, chunk: usize) -> usize {
        if self.is_sliding(i) {
            context.min(self.sliding_window + 2 * chunk)
        } else {
            context
        }
    }

    /// Bytes of layer `i`'s keys and values stored as `types` at a
    /// `context`-token context whose passes run `chunk` tokens at most.
    pub fn kv_bytes(
        &self,
        i: usize,
        context: usize,
        chunk: usize,
        types: crate::kernels::kv::KvTypes,
    ) -> u64 {
        (self.n_head_kv * types.row_bytes(self.head_dim)) as u64
            * self.kv_positions(i, context, chunk) as u64
    }

    /// A small llama for tests: 1 layer, 4 heads over 2 KV heads of 8.
    #[cfg(test)]
    pub fn test_llama() -> HParams {
        HParams {
            arch: Arch::Llama,
            arch_name: "llama".into(),
            n_layer: 1,
            n_embd: 32,
            n_ff: 48,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 8,
            n_vocab: 16,
            context_length: 64,
            rope_freq_base: 10000.0,
            rope_style: RopeStyle::Interleaved,
            rms_eps: 1e-5,
            has_qkv_bias: true,
            mrope_sections: None,
            mrope_interleaved: false,
            tied_embeddings: true,
            qk_norm: false,
            attn_scale: None,
            sliding_window: 0,
            sliding: Vec::new(),
            rope_freq_base_swa: 10_000.0,
            rope_freq_scale: 1.0,
            rope_freq_factors: None,
            moe: None,
        }
    }

    /// Whether this is a vision-language model's text half (positions in
    /// three dimensions).
    pub fn is_multimodal(&self) -> bool {
        self.mrope_sections.is_some()
    }
}

/// llama.cpp's sliding pattern `n`: every `n`-th layer is global, the
/// others local.
fn sliding_pattern(n_layer: usize, n: usize) -> Vec<bool> {
    (0..n_layer).map(|i| (i + 1) % n != 0).collect()
}

/// The block index of a tensor named as GGUF names them (`blk.N.…`);
/// `None` for tensors outside the blocks (and the vision tower's `v.blk.`).
pub fn block_index(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// `block_count` must be the number of blocks whose tensors the file holds:
/// `blk.0.` to `blk.{n-1}.`, none missing and none beyond.
fn check_block_count(g: &GgufFile, n_layer: usize) -> Result<(), ModelError> {
    let mut present = std::collections::BTreeSet::new();
    for t in &g.tensors {
        if !t.name.starts_with("blk.") {
            continue;
        }
        match block_index(&t.name) {
            Some(i) if i < n_layer => {
                present.insert(i);
            }
            _ => {
                return Err(ModelError::Format(format!(
                    "tensor {} lies outside the {n_layer} blocks the metadata declares",
                    t.name
                )))
            }
        }
    }
    if present.len() != n_layer {
        return Err(ModelError::Format(format!(
            "the metadata declares {n_layer} blocks but the file holds tensors for {}",
            present.len()
        )));
    }
    Ok(())
}

/// Checks M-RoPE sections (temporal, height, width; a trailing zero as
/// llama.cpp writes four) against the head size.
fn mrope_sections(
    values: impl Iterator<Item = usize>,
    head_dim: usize,
) -> Result<[usize; 3], ModelError> {
    let v: Vec<usize> = values.collect();
    let ok = (v.len() == 3 || (v.len() == 4 && v[3] == 0))
        && v[..3].iter().sum::<usize>() == head_dim / 2;
    if !ok {
        return Err(ModelError::Format(format!(
            "M-RoPE sections {v:?} do not split the {} rotary frequencies of a {head_dim}-wide head",
            head_dim / 2
        )));
    }
    Ok([v[0], v[1], v[2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemma_config() -> serde_json::Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/gemma3_tiny_text/config.json"
        ))
        .unwrap()
    }

    /// Gemma 3's local layers from either config layout: the older
    /// `sliding_window_pattern` and the newer explicit `layer_types`
    /// (transformers 5 with `rope_parameters` per attention kind).
    #[test]
    fn gemma_sliding_layers_from_both_config_layouts() {
        let old = HParams::from_hf_config(&gemma_config()).unwrap();
        assert_eq!(old.sliding, [true, false, true, false]);
        assert_eq!((old.sliding_window, old.rope_freq_base_swa), (8, 10_000.0));
        assert_eq!(old.rope_freq_base, 1_000_000.0);
        assert!((old.attn_scale.unwrap() - 24f32.powf(-0.5)).abs() < 1e-7);
        assert!(old.tied_embeddings && old.qk_norm && old.post_norms() && old.gelu());
        let mut new = gemma_config();
        let m = new.as_object_mut().unwrap();
        for k in [
            "sliding_window_pattern",
            "rope_theta",
            "rope_local_base_freq",
        ] {
            m.remove(k);
        }
        m.insert(
            "layer_types".into(),
            serde_json::json!([
                "sliding_attention",
                "sliding_attention",
                "full_attention",
                "sliding_attention"
            ]),
        );
        m.insert(
            "rope_parameters".into(),
            serde_json::json!({
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}
            }),
        );
        let hp = HParams::from_hf_config(&new).unwrap();
        assert_eq!(hp.sliding, [true, true, false, true]);
        assert_eq!(
            (hp.rope_freq_base, hp.rope_freq_base_swa),
            (1_000_000.0, 10_000.0)
        );
        // A layer list of the wrong length is refused.
        new["layer_types"] = serde_json::json!(["full_attention"]);
        assert!(HParams::from_hf_config(&new).is_err());
    }

    /// Llama 3.1's rotary divisors: 1 for short wavelengths, the factor for
    /// long ones, smooth between (the values transformers computes, as
    /// `inv_freq / divisor`).
    #[test]
    fn llama3_rope_factors_follow_the_wavelengths() {
        let f = llama3_rope_factors(500_000.0, 128, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(
            f.windows(2).all(|w| w[0] <= w[1]),
            "divisors grow with wavelength"
        );
        let between = f.iter().filter(|&&x| x > 1.0 && x < 8.0).count();
        assert!(between > 0, "some frequencies are smoothed");
    }
}
