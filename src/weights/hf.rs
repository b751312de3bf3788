//! Hugging Face model folders: `config.json` (flat, or with a nested
//! `text_config`), safetensors weights (one file or shards listed in
//! `model.safetensors.index.json`), the tokenizer files and
//! `generation_config.json`. Tensors are read one at a time with positioned
//! reads (not memory maps: a shard that shrinks while it is read, e.g. a
//! download still being written or a file replaced underneath, is an I/O
//! error, not a SIGBUS) and named as GGUF names them, so the converter (`weights::convert`) can
//! write a GGUF the rest of Spillway loads like any other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::model::hparams::{Arch, HParams};
use crate::model::ModelError;

use super::GgmlType;

#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn bad(path: &Path, message: impl Into<String>) -> HfError {
    HfError::Bad {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HfError + '_ {
    move |source| HfError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// True when `dir` looks like a Hugging Face model folder: a config.json and
/// safetensors weights.
pub fn is_hf_folder(dir: &Path) -> bool {
    dir.is_dir()
        && dir.join("config.json").is_file()
        && (dir.join("model.safetensors.index.json").is_file()
            || super::files_with_extension(dir, "safetensors").is_ok_and(|f| !f.is_empty()))
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    /// The checkpoint's own name.
    pub hf_name: String,
    shard: usize,
    pub dtype: GgmlType,
    /// Outermost first.
    pub shape: Vec<usize>,
    /// Byte range inside the shard's mapping.
    start: usize,
    end: usize,
}

impl SourceTensor {
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An opened Hugging Face folder.
pub struct HfFolder {
    pub dir: PathBuf,
    pub config: Json,
    pub hparams: HParams,
    /// The safetensors files, in index order.
    pub shards: Vec<PathBuf>,
    files: Vec<File>,
    /// GGUF name → where the tensor is (vision tower tensors under `v.`).
    pub tensors: BTreeMap<String, SourceTensor>,
}

impl HfFolder {
    pub fn open(dir: &Path) -> Result<Self, HfError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
        let config: Json = serde_json::from_str(&text)
            .map_err(|e| bad(&config_path, format!("not valid JSON: {e}")))?;
        let hparams = HParams::from_hf_config(&config)?;
        let shards = shard_files(dir)?;
        let mut files = Vec::with_capacity(shards.len());
        let mut tensors = BTreeMap::new();
        for (i, path) in shards.iter().enumerate() {
            let file = File::open(path).map_err(io(path))?;
            for t in read_header(path, &file, i)? {
                if let Some(name) = gguf_name(&t.hf_name, hparams.arch) {
                    if tensors.insert(name.clone(), t).is_some() {
                        return Err(bad(path, format!("tensor {name} appears twice")));
                    }
                }
            }
            files.push(file);
        }
        check_layers_present(&hparams, &tensors, dir)?;
        Ok(HfFolder {
            dir: dir.to_path_buf(),
            config,
            hparams,
            shards,
            files,
            tensors,
        })
    }

    /// The tensor's values as f32 (exact for bf16, f16 and f32 sources), rows
    /// of the query and key projections reordered for GGUF's llama layout.
    pub fn read_f32(&self, gguf_name: &str) -> Result<Vec<f32>, HfError> {
        let hp = &self.hparams;
        if gguf_name == super::convert::ROPE_FREQS {
            return hp
                .rope_freq_factors
                .clone()
                .ok_or_else(|| bad(&self.dir, "the config has no llama3 rope scaling"));
        }
        // Experts stored one tensor each are stacked as llama.cpp stores
        // them.
        if let Some(parts) = expert_parts(gguf_name, hp) {
            let mut out = Vec::new();
            for p in parts {
                out.extend(self.read_f32(&p)?);
            }
            return Ok(out);
        }
        let mut out = self.read_stored(gguf_name)?;
        // Gemma multiplies by (1 + w); GGUF stores the gain itself, as
        // llama.cpp's converter writes it.
        if hp.arch == Arch::Gemma3 && gguf_name.ends_with("norm.weight") {
            out.iter_mut().for_each(|v| *v += 1.0);
        }
        Ok(out)
    }

    fn read_stored(&self, gguf_name: &str) -> Result<Vec<f32>, HfError> {
        let t = self
            .tensors
            .get(gguf_name)
            .ok_or_else(|| bad(&self.dir, format!("tensor {gguf_name} is missing")))?;
        let path = &self.shards[t.shard];
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(t.end - t.start)
            .map_err(|_| bad(path, format!("{}: not enough memory to read it", t.hf_name)))?;
        bytes.resize(t.end - t.start, 0);
        self.files[t.shard]
            .read_exact_at(&mut bytes, t.start as u64)
            .map_err(io(path))?;
        let mut out = vec![0f32; t.elems()];
        match t.dtype {
            GgmlType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            GgmlType::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            GgmlType::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            other => {
                return Err(bad(
                    &self.shards[t.shard],
                    format!("{}: unsupported dtype {other}", t.hf_name),
                ))
            }
        }
        if self.hparams.arch == Arch::Llama {
            let hp = &self.hparams;
            if gguf_name.ends_with("attn_q.weight") || gguf_name.ends_with("attn_q.bias") {
                out = interleave_rope_rows(&out, hp.n_head, hp.head_dim);
            } else if gguf_name.ends_with("attn_k.weight") || gguf_name.ends_with("attn_k.bias") {
                out = interleave_rope_rows(&out, hp.n_head_kv, hp.head_dim);
            }
        }
        Ok(out)
    }

    /// A named JSON file of the folder, when present.
    pub fn json_file(&self, name: &str) -> Result<Option<String>, HfError> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                serde_json::from_str::<Json>(&t)
                    .map_err(|e| bad(&path, format!("not valid JSON: {e}")))?;
                Ok(Some(t))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The source dtype most weights have (what "as stored" keeps).
    pub fn stored_type(&self) -> GgmlType {
        self.tensors
            .get("token_embd.weight")
            .map_or(GgmlType::BF16, |t| t.dtype)
    }
}

/// The safetensors files: those the index lists, else model.safetensors,
/// else every `*.safetensors` in the folder.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, HfError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(io(&index))?;
        let json: Json =
            serde_json::from_str(&text).map_err(|e| bad(&index, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| bad(&index, "no weight_map"))?;
        let mut files: Vec<String> = Vec::new();
        for v in map.values() {
            let f = v
                .as_str()
                .ok_or_else(|| bad(&index, "a weight_map value is not a file name"))?;
            if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                return Err(bad(&index, format!("shard name {f:?} leaves the folder")));
            }
            if !files.iter().any(|x| x == f) {
                files.push(f.to_string());
            }
        }
        files.sort();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(bad(
                &index,
                format!("shard {} is missing", missing.display()),
            ));
        }
        return Ok(paths);
    }
    // One file: model.safetensors (other .safetensors beside it, such as
    // adapters or references, are not weights of the model).
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let files = super::files_with_extension(dir, "safetensors").map_err(io(dir))?;
    if files.is_empty() {
        return Err(bad(dir, "no .safetensors weights"));
    }
    Ok(files)
}

/// The tensor table of one safetensors file, checked against its size.
fn read_header(path: &Path, file: &File, shard: usize) -> Result<Vec<SourceTensor>, HfError> {
    let file_len = file.metadata().map_err(io(path))?.len();
    if file_len < 8 {
        return Err(bad(path, "too short to be a safetensors file"));
    }
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0).map_err(io(path))?;
    let n = u64::from_le_bytes(len);
    let header_end = 8u64
        .checked_add(n)
        .filter(|&e| e <= file_len && n <= 100 << 20)
        .ok_or_else(|| bad(path, format!("header of {n} bytes does not fit the file")))?;
    let mut text = vec![0u8; n as usize];
    file.read_exact_at(&mut text, 8).map_err(io(path))?;
    parse_header(path, &text, header_end as usize, file_len, shard)
}

/// `num_hidden_layers` must be the number of layers whose tensors the
/// checkpoint holds (GGUF names `blk.0.` to `blk.{n-1}.`).
fn check_layers_present(
    hp: &HParams,
    tensors: &BTreeMap<String, SourceTensor>,
    dir: &Path,
) -> Result<(), HfError> {
    let present: std::collections::BTreeSet<usize> = tensors
        .keys()
        .filter_map(|n| crate::model::hparams::block_index(n))
        .collect();
    let expected = (0..hp.n_layer).collect::<std::collections::BTreeSet<_>>();
    if present != expected {
        return Err(bad(
            dir,
            format!(
                "config.json declares {} layers but the weights hold {}",
                hp.n_layer,
                present.len()
            ),
        ));
    }
    Ok(())
}

/// The tensor table of shard `shard`'s header (`text`, the JSON after the
/// length), whose data starts at `header_end` of a file of `file_len` bytes.
fn parse_header(
    path: &Path,
    text: &[u8],
    header_end: usize,
    file_len: u64,
    shard: usize,
) -> Result<Vec<SourceTensor>, HfError> {
    let header: serde_json::Map<String, Json> = serde_json::from_slice(text)
        .map_err(|e| bad(path, format!("header is not valid JSON: {e}")))?;
    let data_len = usize::try_from(file_len)
        .unwrap_or(usize::MAX)
        .saturating_sub(header_end);
    let mut out = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| {
            info.get(k)
                .ok_or_else(|| bad(path, format!("{name}: no {k}")))
        };
        let dtype = match field("dtype")?.as_str() {
            Some("BF16") => GgmlType::BF16,
            Some("F16") => GgmlType::F16,
            Some("F32") => GgmlType::F32,
            Some(other) => {
                return Err(bad(
                    path,
                    format!(
                        "{name}: dtype {other} is not supported (bf16, f16 or f32 checkpoints)"
                    ),
                ))
            }
            None => return Err(bad(path, format!("{name}: dtype is not a string"))),
        };
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(path, format!("{name}: bad shape")))?;
        let offsets: Vec<usize> = field("data_offsets")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .filter(|v: &Vec<usize>| v.len() == 2)
            .ok_or_else(|| bad(path, format!("{name}: bad data_offsets")))?;
        let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let width = if dtype == GgmlType::F32 { 4 } else { 2 };
        let want = elems.and_then(|e| e.checked_mul(width));
        if offsets[0] > offsets[1] || offsets[1] > data_len || want != Some(offsets[1] - offsets[0])
        {
            return Err(bad(
                path,
                format!("{name}: its bytes {offsets:?} do not match shape {shape:?} inside the file (truncated?)"),
            ));
        }
        out.push(SourceTensor {
            hf_name: name,
            shard,
            dtype,
            shape,
            start: header_end + offsets[0],
            end: header_end + offsets[1],
        });
    }
    Ok(out)
}

/// The GGUF name of a checkpoint tensor; `None` for tensors the text model
/// does not use (the vision tower, rotary caches).
pub fn gguf_name(hf: &str, arch: Arch) -> Option<String> {
    // Text-model prefixes of the different layouts: Llama/Mistral/Qwen2
    // (`model.`), Qwen2.5-VL as first released (`model.` + `visual.`) and
    // as re-saved by newer transformers (`model.language_model.`).
    let rest = hf
        .strip_prefix("model.language_model.")
        .or_else(|| hf.strip_prefix("language_model.model."))
        .or_else(|| hf.strip_prefix("model."))
        .unwrap_or(hf);
    if let Some(v) = hf
        .strip_prefix("visual.")
        .or_else(|| hf.strip_prefix("model.visual."))
    {
        return vision_gguf_name(v);
    }
    match rest {
        "embed_tokens.weight" => return Some("token_embd.weight".into()),
        "norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    if hf == "lm_head.weight" || hf == "language_model.lm_head.weight" {
        return Some("output.weight".into());
    }
    let (i, module, kind) = indexed(rest.strip_prefix("layers.")?)?;
    // Experts, one tensor each (Qwen3-MoE's `mlp.experts.K.gate_proj`,
    // Mixtral's `block_sparse_moe.experts.K.w1`): named by their stack
    // and index.
    let expert = module
        .strip_prefix("mlp.experts.")
        .or_else(|| module.strip_prefix("block_sparse_moe.experts."));
    if let Some((k, proj)) = expert.and_then(|e| e.split_once('.')) {
        let stack = match proj {
            "gate_proj" | "w1" => "ffn_gate_exps",
            "up_proj" | "w3" => "ffn_up_exps",
            "down_proj" | "w2" => "ffn_down_exps",
            _ => return None,
        };
        let k: usize = k.parse().ok()?;
        return Some(format!("blk.{i}.{stack}.{kind}.{k}"));
    }
    let gemma = arch == Arch::Gemma3;
    let gguf = match module {
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "pre_feedforward_layernorm" if gemma => "ffn_norm",
        "post_feedforward_layernorm" if gemma => "post_ffw_norm",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate" | "block_sparse_moe.gate" => "ffn_gate_inp",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{i}.{gguf}.{kind}"))
}

/// The per-expert source tensors of a stacked expert tensor
/// (`blk.N.ffn_gate_exps.weight` → `blk.N.ffn_gate_exps.weight.0`, …), or
/// `None` for any other name.
pub fn expert_parts(gguf_name: &str, hp: &HParams) -> Option<Vec<String>> {
    let moe = hp.moe?;
    let stacked = [
        "ffn_gate_exps.weight",
        "ffn_up_exps.weight",
        "ffn_down_exps.weight",
    ]
    .iter()
    .any(|s| gguf_name.ends_with(s));
    stacked.then(|| {
        (0..moe.n_expert)
            .map(|k| format!("{gguf_name}.{k}"))
            .collect()
    })
}

/// `N.module.path.kind` → (N, `module.path`, `kind`).
fn indexed(rest: &str) -> Option<(usize, &str, &str)> {
    let (i, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    Some((i.parse().ok()?, module, kind))
}

/// The GGUF name of a Qwen2.5-VL or Qwen3-VL vision tower tensor (the
/// part after `visual.`).
fn vision_gguf_name(v: &str) -> Option<String> {
    match v {
        "patch_embed.proj.weight" => return Some("v.patch_embd.weight".into()),
        "patch_embed.proj.bias" => return Some("v.patch_embd.bias".into()),
        "pos_embed.weight" => return Some("v.position_embd.weight".into()),
        "merger.ln_q.weight" => return Some("v.merger.norm.weight".into()),
        _ => {}
    }
    // Qwen3-VL's mergers: `merger.{norm,linear_fc1,linear_fc2}` and
    // `deepstack_merger_list.K.…`.
    let merger = |prefix: String, rest: &str| -> Option<String> {
        let (module, kind) = rest.rsplit_once('.')?;
        let part = match module {
            "norm" => "norm",
            "linear_fc1" => "fc1",
            "linear_fc2" => "fc2",
            _ => return None,
        };
        Some(format!("{prefix}.{part}.{kind}"))
    };
    if let Some(rest) = v.strip_prefix("deepstack_merger_list.") {
        let (k, rest) = rest.split_once('.')?;
        let k: usize = k.parse().ok()?;
        return merger(format!("v.deepstack.{k}"), rest);
    }
    if let Some(rest) = v.strip_prefix("merger.") {
        if let Some(name) = merger("v.merger".into(), rest) {
            return Some(name);
        }
    }
    if let Some(rest) = v.strip_prefix("merger.mlp.") {
        let (i, kind) = rest.split_once('.')?;
        let fc = match i {
            "0" => "fc1",
            "2" => "fc2",
            _ => return None,
        };
        return Some(format!("v.merger.{fc}.{kind}"));
    }
    let (i, module, kind) = indexed(v.strip_prefix("blocks.")?)?;
    let name = match module {
        "norm1" => "ln1",
        "norm2" => "ln2",
        "attn.qkv" => "attn_qkv",
        "attn.proj" => "attn_out",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        // Qwen3-VL's ungated MLP.
        "mlp.linear_fc1" => "ffn_up",
        "mlp.linear_fc2" => "ffn_down",
        _ => return None,
    };
    Some(format!("v.blk.{i}.{name}.{kind}"))
}

/// Reorders the rows of a query or key projection from Hugging Face's
/// rotary layout (each head's first half rotates with its second half) to
/// GGUF llama's (adjacent pairs rotate), as llama.cpp's converter does.
/// Works for a weight (rows × cols) and a bias (cols = 1).
pub fn interleave_rope_rows(w: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    let rows = heads * head_dim;
    let cols = w.len() / rows.max(1);
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let from = h * head_dim + s * half + j;
                let to = h * head_dim + 2 * j + s;
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_every_layout() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", Some("token_embd.weight")),
            ("lm_head.weight", Some("output.weight")),
            ("model.norm.weight", Some("output_norm.weight")),
            (
                "model.layers.3.self_attn.q_proj.bias",
                Some("blk.3.attn_q.bias"),
            ),
            (
                "model.language_model.layers.0.mlp.down_proj.weight",
                Some("blk.0.ffn_down.weight"),
            ),
            (
                "model.layers.1.post_attention_layernorm.weight",
                Some("blk.1.ffn_norm.weight"),
            ),
            (
                "visual.blocks.0.attn.qkv.weight",
                Some("v.blk.0.attn_qkv.weight"),
            ),
            (
                "model.visual.merger.mlp.0.weight",
                Some("v.merger.fc1.weight"),
            ),
            (
                "visual.patch_embed.proj.weight",
                Some("v.patch_embd.weight"),
            ),
            ("visual.rotary_pos_emb.inv_freq", None),
            (
                "model.visual.deepstack_merger_list.2.linear_fc1.bias",
                Some("v.deepstack.2.fc1.bias"),
            ),
            ("model.visual.merger.norm.bias", Some("v.merger.norm.bias")),
            (
                "model.visual.pos_embed.weight",
                Some("v.position_embd.weight"),
            ),
            (
                "model.visual.blocks.4.mlp.linear_fc2.weight",
                Some("v.blk.4.ffn_down.weight"),
            ),
            (
                "model.visual.patch_embed.proj.bias",
                Some("v.patch_embd.bias"),
            ),
            ("model.layers.0.self_attn.rotary_emb.inv_freq", None),
        ] {
            assert_eq!(gguf_name(hf, Arch::Qwen2).as_deref(), gguf, "{hf}");
        }
    }

    #[test]
    fn rope_rows_interleave() {
        // One head of 4 dims, 1 column: rows [a0 a1 | b0 b1] → [a0 b0 a1 b1].
        assert_eq!(
            interleave_rope_rows(&[0., 1., 2., 3.], 1, 4),
            vec![0., 2., 1., 3.]
        );
        // Two heads, two columns.
        let w: Vec<f32> = (0..16).map(|x| x as f32).collect();
        let p = interleave_rope_rows(&w, 2, 4);
        assert_eq!(&p[..8], &[0., 1., 4., 5., 2., 3., 6., 7.]);
        assert_eq!(&p[8..], &[8., 9., 12., 13., 10., 11., 14., 15.]);
    }
}
