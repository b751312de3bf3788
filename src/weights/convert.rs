//! Hugging Face folder → GGUF: every tensor quantized (or kept) as the
//! scheme says, layer by layer on all cores, written once into the cache
//! and loaded from there like any GGUF (disk-tier layers read from it too).
//!
//! The scheme's types per tensor are `placement::Quant::tensor_type` — the
//! same function the planner sizes a config.json with, so a plan made
//! before converting is exact: 4-bit is llama.cpp's Q4_K_M mix (Q4_K, with
//! Q6_K for the output head and for the attention-value and FFN-down
//! projections of the first and last eighth of the layers and every third
//! between), 8-bit is Q8_0; norms and biases stay f32. Rows that are not
//! whole Q4_K/Q6_K super-blocks of 256 fall back as llama.cpp does (Q5_0,
//! Q8_0).

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::gguf::Value;
use super::gguf_write::{GgufWriter, PlannedTensor};
use super::hf::{HfError, HfFolder};
use super::tokenizer::{HF_CHAT_TEMPLATE, HF_TOKENIZER_CONFIG, HF_TOKENIZER_JSON};
use super::GgmlType;
use crate::model::hparams::{Arch, HParams};
use crate::model::transformer::LayerWeights;
use crate::model::ModelError;
use crate::placement::Quant;

/// Bumped whenever the converter's output changes, so old cache entries are
/// not reused.
const CONVERTER_VERSION: u32 = 3;

/// Llama 3's rotary divisors, as llama.cpp names them.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// The generation_config.json of the source, kept in the GGUF.
pub const HF_GENERATION_CONFIG: &str = "spillway.hf.generation_config_json";
/// The source's config.json (a vision model reads its vision_config and
/// token ids from it).
pub const HF_CONFIG: &str = "spillway.hf.config_json";
/// The source's preprocessor_config.json (image processor settings).
pub const HF_PREPROCESSOR_CONFIG: &str = "spillway.hf.preprocessor_config_json";

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Hf(#[from] HfError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("converting needs {needed} MiB under {dir} but {free} MiB are free; free some space or set SPILLWAY_CACHE_DIR to a larger disk", needed = .needed >> 20, free = .free >> 20)]
    DiskFull {
        dir: PathBuf,
        needed: u64,
        free: u64,
    },
}

/// One tensor of a converted (or synthesized) GGUF: its name, block, shape
/// and the type the scheme gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub layer: Option<usize>,
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
}

impl TensorPlan {
    pub fn elems(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Exact bytes in the file.
    pub fn bytes(&self) -> Result<u64, ModelError> {
        self.ggml_type.bytes_for(self.elems()).ok_or_else(|| {
            ModelError::Format(format!(
                "{}: {} values are not whole {} blocks",
                self.name,
                self.elems(),
                self.ggml_type
            ))
        })
    }
}

/// The tensors converting a checkpoint with `config` under `quant` gives,
/// in file order (embeddings, blocks, final norm, head, vision tower), each
/// in its type. The converter, the planner's footprint of a config.json
/// and `synthesize` all use this one list, so their sizes agree to the
/// byte. `with_head`: the file has its own output head (untied, or a
/// checkpoint that stores one anyway); `stored`: a tensor's type in the
/// checkpoint (it matters only for the as-stored scheme).
pub fn layout(
    hp: &HParams,
    config: &serde_json::Value,
    quant: Quant,
    with_head: bool,
    stored: &dyn Fn(&str) -> GgmlType,
) -> Result<Vec<TensorPlan>, ModelError> {
    let mut wanted: Vec<(String, Option<usize>, Vec<usize>)> = vec![(
        "token_embd.weight".into(),
        None,
        vec![hp.n_vocab, hp.n_embd],
    )];
    let block = LayerWeights::expected_shapes(hp);
    for i in 0..hp.n_layer {
        for (n, s) in &block {
            wanted.push((format!("blk.{i}.{n}"), Some(i), s.clone()));
        }
    }
    wanted.push(("output_norm.weight".into(), None, vec![hp.n_embd]));
    if hp.rope_freq_factors.is_some() {
        wanted.push((ROPE_FREQS.into(), None, vec![hp.head_dim / 2]));
    }
    if with_head {
        wanted.push(("output.weight".into(), None, vec![hp.n_vocab, hp.n_embd]));
    }
    // A vision-language model's tower, after the language model.
    if hp.is_multimodal() && config.get("vision_config").is_some() {
        let vc = crate::vision::VisionConfig::from_config(config, hp.n_embd)?;
        for (name, shape) in vc.expected_shapes() {
            wanted.push((name, None, shape));
        }
    }
    Ok(wanted
        .into_iter()
        .map(|(name, layer, shape)| {
            let row = *shape.last().unwrap_or(&1);
            let ggml_type = quant.tensor_type(
                &name,
                layer,
                hp.n_layer,
                row,
                shape.len() == 1,
                stored(&name),
            );
            TensorPlan {
                name,
                layer,
                shape,
                ggml_type,
            }
        })
        .collect())
}

/// The checkpoint's storage type as its config.json names it
/// (`torch_dtype`, or transformers 5's `dtype`, top level or in
/// `text_config`); bf16 when it names none.
pub fn stored_type(config: &serde_json::Value) -> GgmlType {
    match config
        .get("text_config")
        .and_then(|t| t.get("torch_dtype").or_else(|| t.get("dtype")))
        .or_else(|| config.get("torch_dtype").or_else(|| config.get("dtype")))
        .and_then(serde_json::Value::as_str)
    {
        Some("float32") => GgmlType::F32,
        Some("float16") => GgmlType::F16,
        _ => GgmlType::BF16,
    }
}

/// The output tensors in file order, checked against the source's shapes.
fn jobs(folder: &HfFolder, quant: Quant) -> Result<Vec<TensorPlan>, ConvertError> {
    let hp = &folder.hparams;
    let with_head = folder.tensors.contains_key("output.weight") || !hp.tied_embeddings;
    let stored = |name: &str| folder.tensors.get(name).map_or(GgmlType::BF16, |t| t.dtype);
    let out = layout(hp, &folder.config, quant, with_head, &stored)?;
    for t in &out {
        if t.name == ROPE_FREQS {
            continue;
        }
        if let Some(parts) = super::hf::expert_parts(&t.name, hp) {
            for part in parts {
                let src = folder.tensors.get(&part).ok_or_else(|| {
                    ModelError::Format(format!(
                        "{}: the checkpoint has no tensor for {part}",
                        folder.dir.display()
                    ))
                })?;
                if src.shape[..] != t.shape[1..] {
                    return Err(ModelError::Format(format!(
                        "{} has shape {:?}, config.json implies {:?}",
                        src.hf_name,
                        src.shape,
                        &t.shape[1..]
                    ))
                    .into());
                }
            }
            continue;
        }
        let src = folder.tensors.get(&t.name).ok_or_else(|| {
            ModelError::Format(format!(
                "{}: the checkpoint has no tensor for {}",
                folder.dir.display(),
                t.name
            ))
        })?;
        // The patch embedding is a Conv3d kernel (out, 3, 2, 14, 14): the
        // same values as the (out, 1176) matrix it is used as.
        let reshaped = t.name == "v.patch_embd.weight"
            && src.shape.first() == t.shape.first()
            && src.elems() == t.shape.iter().product::<usize>();
        if src.shape != t.shape && !reshaped {
            return Err(ModelError::Format(format!(
                "{} has shape {:?}, config.json implies {:?}",
                src.hf_name, src.shape, t.shape
            ))
            .into());
        }
    }
    Ok(out)
}

/// `values` stored as `t`.
pub fn encode(values: Vec<f32>, shape: &[usize], t: GgmlType) -> Result<Vec<u8>, ModelError> {
    Ok(match t {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => {
            let tensor = candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu)?;
            let q = candle_core::quantized::QTensor::quantize(&tensor, t.to_candle())?;
            q.data()?.into_owned()
        }
    })
}

/// The architecture's hyper-parameters as llama.cpp's GGUF keys, plus the
/// scheme and what the file was made from (`spillway.source`).
pub fn hparams_metadata(
    hp: &HParams,
    name: &str,
    quant: Quant,
    source_key: &str,
) -> Vec<(String, Value)> {
    let arch = Arch::gguf_name(hp);
    let k = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| Value::U32(v as u32);
    let mut m = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name.into())),
        (k("context_length"), u(hp.context_length)),
        (k("embedding_length"), u(hp.n_embd)),
        (k("block_count"), u(hp.n_layer)),
        (k("feed_forward_length"), u(hp.n_ff)),
        (k("attention.head_count"), u(hp.n_head)),
        (k("attention.head_count_kv"), u(hp.n_head_kv)),
        (k("attention.key_length"), u(hp.head_dim)),
        (k("attention.value_length"), u(hp.head_dim)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(hp.rms_eps),
        ),
        (k("rope.freq_base"), Value::F32(hp.rope_freq_base)),
        ("spillway.quant".into(), Value::String(quant.to_string())),
        ("spillway.source".into(), Value::String(source_key.into())),
    ];
    if let Some(moe) = hp.moe {
        m.extend([
            (k("expert_count"), u(moe.n_expert)),
            (k("expert_used_count"), u(moe.n_expert_used)),
            (k("expert_feed_forward_length"), u(moe.n_ff_exp)),
            (k("expert_weights_norm"), Value::Bool(moe.norm_topk)),
        ]);
    }
    if hp.sliding_window > 0 {
        m.extend([
            (k("attention.sliding_window"), u(hp.sliding_window)),
            (
                k("attention.sliding_window_pattern"),
                Value::Array(hp.sliding.iter().map(|&b| Value::Bool(b)).collect()),
            ),
            (k("rope.freq_base_swa"), Value::F32(hp.rope_freq_base_swa)),
        ]);
    }
    if let Some(scale) = hp.attn_scale {
        m.push((k("attention.scale"), Value::F32(scale)));
    }
    if hp.rope_freq_scale != 1.0 {
        m.extend([
            (k("rope.scaling.type"), Value::String("linear".into())),
            (
                k("rope.scaling.factor"),
                Value::F32(1.0 / hp.rope_freq_scale),
            ),
        ]);
    }
    if let Some(sec) = hp.mrope_sections {
        m.push((
            k("rope.dimension_sections"),
            Value::Array(
                sec.iter()
                    .chain(&[0])
                    .map(|&v| Value::U32(v as u32))
                    .collect(),
            ),
        ));
    }
    m
}

/// The Hugging Face JSON files kept in a GGUF, with their metadata keys
/// (besides tokenizer.json).
pub const KEPT_JSON_FILES: [(&str, &str); 5] = [
    (HF_TOKENIZER_CONFIG, "tokenizer_config.json"),
    (HF_CHAT_TEMPLATE, "chat_template.json"),
    (HF_GENERATION_CONFIG, "generation_config.json"),
    (HF_CONFIG, "config.json"),
    (HF_PREPROCESSOR_CONFIG, "preprocessor_config.json"),
];

/// The model's name for `general.name`: the Hub's (a cache snapshot sits
/// in `models--ORG--NAME/snapshots/HASH`), else the folder's.
fn model_name(folder: &HfFolder) -> String {
    let dir = &folder.dir;
    let hub = dir
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("models--"))
        .and_then(|n| n.split("--").last());
    match hub {
        Some(n) => n.to_string(),
        None => dir
            .file_name()
            .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned()),
    }
}

fn metadata(
    folder: &HfFolder,
    quant: Quant,
    source_key: &str,
) -> Result<Vec<(String, Value)>, ConvertError> {
    let name = model_name(folder);
    let mut m = hparams_metadata(&folder.hparams, &name, quant, source_key);
    let tokenizer = folder.json_file("tokenizer.json")?.ok_or_else(|| {
        ModelError::Format(format!("{} has no tokenizer.json", folder.dir.display()))
    })?;
    m.push((HF_TOKENIZER_JSON.into(), Value::String(tokenizer)));
    for (key, file) in KEPT_JSON_FILES {
        if let Some(text) = folder.json_file(file)? {
            m.push((key.into(), Value::String(text)));
        }
    }
    Ok(m)
}

/// Converts `folder` into the GGUF `out` (written to a temporary file, synced,
/// then renamed, so `out` is whole or absent). `progress(done, total)` after
/// each layer; an error from it (a cancel) stops the conversion.
pub fn convert(
    folder: &HfFolder,
    quant: Quant,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize) -> Result<(), ModelError>,
) -> Result<(), ConvertError> {
    let jobs = jobs(folder, quant)?;
    write_atomically(&jobs, out, &mut |planned, tmp| {
        write(folder, quant, &jobs, planned, tmp, progress)
    })
}

/// Writes the GGUF of `tensors` to `out` through `write(planned, tmp)`:
/// free disk checked first, a temporary file synced then renamed, so `out`
/// is whole or absent (the temporary file is removed on any error).
pub fn write_atomically(
    tensors: &[TensorPlan],
    out: &Path,
    write: &mut dyn FnMut(Vec<PlannedTensor>, &Path) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    let planned: Vec<PlannedTensor> = tensors
        .iter()
        .map(|j| PlannedTensor {
            name: j.name.clone(),
            shape: j.shape.clone(),
            ggml_type: j.ggml_type,
        })
        .collect();
    let mut needed: u64 = 64 << 20;
    for t in tensors {
        needed = needed.saturating_add(t.bytes()?);
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|source| ConvertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    if let Some(free) = crate::telemetry::machine::disk_free_bytes(dir) {
        if free < needed {
            return Err(ConvertError::DiskFull {
                dir: dir.to_path_buf(),
                needed,
                free,
            });
        }
    }
    let tmp = out.with_extension(format!("gguf.tmp{}", std::process::id()));
    let result = write(planned, &tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    std::fs::rename(&tmp, out).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        ConvertError::Write {
            path: out.to_path_buf(),
            source,
        }
    })?;
    // The rename is durable once the folder is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write(
    folder: &HfFolder,
    quant: Quant,
    jobs: &[TensorPlan],
    planned: Vec<PlannedTensor>,
    tmp: &Path,
    progress: &mut dyn FnMut(usize, usize) -> Result<(), ModelError>,
) -> Result<(), ConvertError> {
    let key = source_key(folder, quant);
    let meta = metadata(folder, quant, &key)?;
    let make = |i: usize| -> Result<Vec<u8>, ConvertError> {
        let j = &jobs[i];
        let values = folder.read_f32(&j.name)?;
        Ok(encode(values, &j.shape, j.ggml_type)?)
    };
    write_tensors(
        jobs,
        &meta,
        planned,
        tmp,
        folder.hparams.n_layer,
        &make,
        progress,
    )
}

/// Writes the GGUF of `jobs` with `meta` to `tmp`: groups of consecutive
/// jobs of one layer (or one non-layer tensor) made by `make(index)` in
/// parallel and written in order, `progress(layers done, n_layer)` after
/// each layer, then synced.
fn write_tensors(
    jobs: &[TensorPlan],
    meta: &[(String, Value)],
    planned: Vec<PlannedTensor>,
    tmp: &Path,
    n_layer: usize,
    make: &(dyn Fn(usize) -> Result<Vec<u8>, ConvertError> + Sync),
    progress: &mut dyn FnMut(usize, usize) -> Result<(), ModelError>,
) -> Result<(), ConvertError> {
    let werr = |source: std::io::Error| ConvertError::Write {
        path: tmp.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(tmp).map_err(werr)?;
    let mut w = GgufWriter::new(
        std::io::BufWriter::with_capacity(8 << 20, file),
        meta,
        planned,
    )
    .map_err(werr)?;
    let mut start = 0;
    let mut layers_done = 0;
    while start < jobs.len() {
        let layer = jobs[start].layer;
        let end = if layer.is_some() {
            start
                + jobs[start..]
                    .iter()
                    .take_while(|j| j.layer == layer)
                    .count()
        } else {
            start + 1
        };
        let encoded: Vec<Result<Vec<u8>, ConvertError>> =
            (start..end).into_par_iter().map(make).collect();
        for (j, bytes) in jobs[start..end].iter().zip(encoded) {
            w.write_tensor(&j.name, &bytes?).map_err(werr)?;
        }
        if layer.is_some() {
            layers_done += 1;
            progress(layers_done, n_layer)?;
        }
        start = end;
    }
    let buf = w.finish().map_err(werr)?;
    let file = buf.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)
}

/// What identifies a conversion: the converter version, the scheme, and
/// every source file's name, size and modification time.
pub fn source_key(folder: &HfFolder, quant: Quant) -> String {
    let mut files: Vec<PathBuf> = folder.shards.clone();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
        "generation_config.json",
    ] {
        files.push(folder.dir.join(f));
    }
    let mut h = Fnv::default();
    h.add(format!("v{CONVERTER_VERSION} {quant}").as_bytes());
    for f in files {
        h.add(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        if let Ok(m) = std::fs::metadata(&f) {
            h.add(&m.len().to_le_bytes());
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            h.add(&mtime.to_le_bytes());
        }
    }
    format!("{:016x}", h.0)
}

/// FNV-1a, 64 bits: a cache key, not a checksum of trust.
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn finish(&self) -> u64 {
        self.0
    }

    pub fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
}

/// The cache folder for converted models: `SPILLWAY_CACHE_DIR`, else the
/// platform cache folder (`~/.cache/spillway/converted`).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("SPILLWAY_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => directories::ProjectDirs::from("", "", "spillway")
            .map_or_else(
                || PathBuf::from(".spillway-cache"),
                |d| d.cache_dir().to_path_buf(),
            )
            .join("converted"),
    }
}

/// What the converted-model cache holds: bytes and files (converted GGUFs
/// and leftovers of interrupted conversions).
pub fn cache_usage(dir: &Path) -> (u64, usize) {
    cache_files(dir)
        .iter()
        .filter_map(|p| p.metadata().ok())
        .fold((0, 0), |(b, n), m| (b + m.len(), n + 1))
}

/// The files of the cache folder that Spillway writes there: `*.gguf` and
/// their `*.gguf.tmpPID` temporaries (nothing else is ever touched).
fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.ends_with(".gguf") || tmp_pid(&n).is_some())
        })
        .collect()
}

/// The process that writes `NAME.gguf.tmpPID`.
fn tmp_pid(name: &str) -> Option<u32> {
    name.rsplit_once(".gguf.tmp")
        .and_then(|(_, pid)| pid.parse().ok())
}

/// Removes the temporaries of conversions whose process is gone (killed
/// or crashed mid-write); returns how many.
pub fn clean_stale(dir: &Path) -> usize {
    cache_files(dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.and_then(|n| tmp_pid(&n))
                .is_some_and(|pid| !crate::telemetry::process_alive(pid))
        })
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

/// Empties the cache (converted GGUFs and dead conversions' temporaries;
/// a conversion running now keeps its file). Returns the bytes freed.
pub fn clear_cache(dir: &Path) -> u64 {
    clean_stale(dir);
    cache_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter_map(|p| {
            let len = p.metadata().ok()?.len();
            std::fs::remove_file(&p).ok().map(|()| len)
        })
        .sum()
}

/// The converted GGUF of `dir` under `quant`: from the cache when an entry
/// with the same key exists, else converted now (`progress` per layer).
/// Returns the path and whether it was converted now.
pub fn cached_gguf(
    dir: &Path,
    quant: Quant,
    cache: Option<PathBuf>,
    progress: &mut dyn FnMut(usize, usize) -> Result<(), ModelError>,
) -> Result<(PathBuf, bool), ConvertError> {
    let folder = HfFolder::open(dir)?;
    let key = source_key(&folder, quant);
    let name = dir
        .file_name()
        .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let cache = cache.unwrap_or_else(cache_dir);
    clean_stale(&cache);
    let out = cache.join(format!("{name}-{quant}-{key}.gguf"));
    if out.is_file() {
        return Ok((out, false));
    }
    convert(&folder, quant, &out, progress)?;
    Ok((out, true))
}

/// A GGUF quantized lower: every tensor that `quant` stores in fewer bytes
/// than it has now is dequantized and re-encoded (by the same per-tensor
/// rule as conversions), the rest copied as they are; metadata kept. This
/// is how a self-draft is made from the model already on disk.
pub fn requantize(
    src: &Path,
    quant: Quant,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize) -> Result<(), ModelError>,
) -> Result<(), ConvertError> {
    let gguf = super::gguf::GgufFile::open(src).map_err(|e| ModelError::Format(e.to_string()))?;
    let hp = HParams::from_gguf(&gguf)?;
    let file = std::fs::File::open(src).map_err(|source| ConvertError::Write {
        path: src.to_path_buf(),
        source,
    })?;
    let jobs = requantized(&gguf, hp.n_layer, quant);
    let mut meta: Vec<(String, Value)> = gguf
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment" && k.as_str() != "general.file_type")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.push((
        "spillway.requantized_from".into(),
        Value::String(src.display().to_string()),
    ));
    let make = |i: usize| -> Result<Vec<u8>, ConvertError> {
        let (info, job) = (&gguf.tensors[i], &jobs[i]);
        let q = super::read::read_qtensor(&file, info).map_err(ModelError::from)?;
        if job.ggml_type == info.ggml_type {
            return Ok(q.data().map_err(ModelError::from)?.into_owned());
        }
        let values = crate::model::transformer::to_f32_vec(&q)?;
        Ok(encode(values, &job.shape, job.ggml_type)?)
    };
    write_atomically(&jobs, out, &mut |planned, tmp| {
        write_tensors(&jobs, &meta, planned, tmp, hp.n_layer, &make, progress)
    })
}

/// The tensors of `gguf` as [`requantize`] writes them: each in the type
/// `quant` gives it when that is smaller, else as it is (the vision tower
/// always as it is).
pub fn requantized(gguf: &super::gguf::GgufFile, n_layer: usize, quant: Quant) -> Vec<TensorPlan> {
    let layer_of = |name: &str| {
        name.strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
    };
    gguf.tensors
        .iter()
        .map(|t| {
            let layer = layer_of(&t.name);
            let row = *t.shape.last().unwrap_or(&1);
            let want = quant.tensor_type(
                &t.name,
                layer,
                n_layer,
                row,
                t.shape.len() == 1,
                t.ggml_type,
            );
            let elems = t.shape.iter().map(|&d| d as u64).product();
            let smaller = want
                .bytes_for(elems)
                .is_some_and(|b| b < t.size_bytes && !t.name.starts_with("v."));
            TensorPlan {
                name: t.name.clone(),
                layer,
                shape: t.shape.clone(),
                ggml_type: if smaller { want } else { t.ggml_type },
            }
        })
        .collect()
}

/// [`requantize`] into the cache (once per source file, size, modification
/// time and scheme); returns the path.
pub fn cached_requantized(
    src: &Path,
    quant: Quant,
    cache: Option<PathBuf>,
    progress: &mut dyn FnMut(usize, usize) -> Result<(), ModelError>,
) -> Result<PathBuf, ConvertError> {
    let meta = std::fs::metadata(src).map_err(|source| ConvertError::Write {
        path: src.to_path_buf(),
        source,
    })?;
    let mut h = Fnv::default();
    h.add(format!("requantize v{CONVERTER_VERSION} {quant}").as_bytes());
    h.add(src.as_os_str().as_encoded_bytes());
    h.add(&meta.len().to_le_bytes());
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    h.add(&mtime.to_le_bytes());
    let stem = src
        .file_stem()
        .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let cache = cache.unwrap_or_else(cache_dir);
    clean_stale(&cache);
    let out = cache.join(format!("{stem}-draft-{quant}-{:016x}.gguf", h.finish()));
    if !out.is_file() {
        requantize(src, quant, &out, progress)?;
    }
    Ok(out)
}
