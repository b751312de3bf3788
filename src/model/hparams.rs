//! Typed hyper-parameters read from GGUF metadata, with the architecture
//! check. Nothing past this point reads metadata keys as strings.

use std::fmt;

use crate::weights::gguf::{GgufFile, Value};

use super::ModelError;

/// Architectures whose forward pass Spillway implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama, Mistral, SmolLM and other `llama`-tagged GGUFs.
    Llama,
    Qwen2,
}

impl Arch {
    pub const SUPPORTED: &'static str =
        "llama (Llama, Mistral, SmolLM), mistral, qwen2, qwen2vl (Qwen2.5-VL, RoboBrain 2.0)";

    fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "llama" | "mistral" => Some(Arch::Llama),
            "qwen2" | "qwen2vl" => Some(Arch::Qwen2),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        })
    }
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
            None if arch_name == "qwen2vl" => {
                return Err(ModelError::Format(
                    "qwen2vl model without rope.dimension_sections".into(),
                ))
            }
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
                Arch::Qwen2 => RopeStyle::Halves,
            },
            rms_eps: opt_f32("attention.layer_norm_rms_epsilon", 1e-5),
            has_qkv_bias: g.tensor("blk.0.attn_q.bias").is_some(),
            tied_embeddings: g.tensor("output.weight").is_none(),
            mrope_sections,
            arch_name,
        })
    }

    /// Hyper-parameters from a Hugging Face `config.json` (flat, or with the
    /// language model under `text_config` as multimodal models write it).
    /// Architectures are named by `model_type`: `llama`, `mistral`, `qwen2`,
    /// and the text half of `qwen2_5_vl`.
    pub fn from_hf_config(config: &serde_json::Value) -> Result<Self, ModelError> {
        let top = config;
        let text = config.get("text_config").unwrap_or(config);
        let model_type = top
            .get("model_type")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| ModelError::Format("config.json has no model_type".into()))?;
        let arch = match model_type {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" | "qwen2_5_vl" => Arch::Qwen2,
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
        let mrope_sections = if model_type == "qwen2_5_vl" {
            let listed = ["rope_scaling", "rope_parameters"].iter().find_map(|k| {
                get(k)
                    .and_then(|r| r.get("mrope_section"))
                    .and_then(serde_json::Value::as_array)
            });
            Some(match listed {
                Some(a) => mrope_sections(
                    a.iter()
                        .filter_map(serde_json::Value::as_u64)
                        .map(|v| v as usize),
                    head_dim,
                )?,
                // Qwen2.5-VL's sections for its 128-wide heads.
                None => mrope_sections([16, 24, 24].into_iter(), head_dim)?,
            })
        } else {
            None
        };
        Ok(HParams {
            arch,
            arch_name: model_type.to_string(),
            n_layer: size("num_hidden_layers", limits::LAYERS)?,
            n_embd,
            n_ff: size("intermediate_size", limits::FEED_FORWARD)?,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab: size("vocab_size", limits::VOCAB)?,
            context_length: size("max_position_embeddings", limits::CONTEXT)?,
            // transformers 5 writes it under rope_parameters.
            rope_freq_base: get("rope_theta")
                .or_else(|| get("rope_parameters").and_then(|r| r.get("rope_theta")))
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(10_000.0) as f32,
            rope_style: RopeStyle::Halves,
            rms_eps: float("rms_norm_eps", 1e-6) as f32,
            has_qkv_bias: arch == Arch::Qwen2,
            tied_embeddings: get("tie_word_embeddings")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            mrope_sections,
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

    /// Whether this is a vision-language model's text half (positions in
    /// three dimensions).
    pub fn is_multimodal(&self) -> bool {
        self.mrope_sections.is_some()
    }

    /// Bytes of K and V for one token across all layers, at f32.
    pub fn kv_bytes_per_token(&self) -> u64 {
        (2 * self.n_layer * self.n_head_kv * self.head_dim * 4) as u64
    }
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
