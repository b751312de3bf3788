//! Synthetic models: a GGUF with seeded random weights in exactly the
//! tensors, shapes, types and metadata that converting the Hugging Face
//! checkpoint of a `config.json` would give (the converter's own
//! [`layout`]), plus a real tokenizer, so that speed and memory can be
//! measured at any real model's scale without downloading it.
//!
//! Weights are written block by block in their storage format: random
//! codes with block scales chosen so that each matrix's values have mean
//! ≈ 0 and standard deviation 1/√(row length) (activations stay of order
//! one through every layer), norms are 1 and biases small. Nothing is held
//! but one piece of one tensor; pieces are made in parallel, each from its
//! own seed, so the file is the same whatever the thread count.
//!
//! A synthetic file says so in its metadata ([`SYNTHETIC_KEY`]); the CLI
//! warns when it loads one and the window labels it.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::convert::{
    hparams_metadata, layout, write_atomically, ConvertError, TensorPlan, HF_CONFIG,
    HF_GENERATION_CONFIG, HF_PREPROCESSOR_CONFIG,
};
use super::gguf::{GgufFile, Value};
use super::gguf_write::{GgufWriter, PlannedTensor};
use super::tokenizer::HF_CHAT_TEMPLATE;
use super::GgmlType;
use crate::model::hparams::HParams;
use crate::model::ModelError;
use crate::placement::Quant;

/// Metadata key that marks a file's weights as random.
pub const SYNTHETIC_KEY: &str = "spillway.synthetic";
/// The seed the weights were made from.
pub const SYNTHETIC_SEED_KEY: &str = "spillway.synthetic.seed";

/// What the window and the CLI say about a synthetic model.
pub const SYNTHETIC_NOTICE: &str = "synthetic weights — speed tests only";

/// The tokenizer a synthetic model gets when none is named: SmolLM2's
/// (Apache-2.0), as a GGUF holding only `tokenizer.*` metadata. Cut or
/// padded to the config's vocabulary size.
const DEFAULT_TOKENIZER: &[u8] = include_bytes!("../../assets/smollm2-tokenizer.gguf");

/// About how many bytes one task makes (a whole number of blocks: see
/// [`piece_blocks`]).
const PIECE_TARGET: usize = 1 << 18;

/// Whether `g`'s weights are synthetic.
pub fn is_synthetic(g: &GgufFile) -> bool {
    g.get(SYNTHETIC_KEY).and_then(Value::as_bool) == Some(true)
}

/// What to synthesize.
pub struct SynthOptions {
    /// A Hugging Face config.json. Beside it may sit the files a converter
    /// keeps: preprocessor_config.json, generation_config.json and
    /// chat_template.json (its template replaces the tokenizer's).
    pub config_path: PathBuf,
    pub quant: Quant,
    pub seed: u64,
    /// A GGUF whose `tokenizer.*` metadata to use (any model or a
    /// vocabulary-only file); `None`: SmolLM2's tokenizer.
    pub tokenizer: Option<PathBuf>,
    /// Router row scales (r + 1)^-skew by a seeded expert rank (0: none).
    pub router_skew: f32,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct SynthReport {
    pub tensors: Vec<TensorPlan>,
    /// Payload bytes (every tensor, unpadded).
    pub weight_bytes: u64,
    pub file_bytes: u64,
    /// Tokens of the donor tokenizer kept, and padding tokens added.
    pub tokens_kept: usize,
    pub tokens_padded: usize,
}

fn read_text(path: &Path) -> Result<Option<String>, ModelError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            if bytes.len() > 64 << 20 {
                return Err(ModelError::Format(format!(
                    "{} is {} MiB; a model's JSON file is far smaller",
                    path.display(),
                    bytes.len() >> 20
                )));
            }
            String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| ModelError::Format(format!("{} is not UTF-8 text", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::Format(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The config, its hyper-parameters and the tensors it gives under `quant`.
pub fn plan(
    config_path: &Path,
    quant: Quant,
) -> Result<(serde_json::Value, String, HParams, Vec<TensorPlan>), ModelError> {
    let text = read_text(config_path)?
        .ok_or_else(|| ModelError::Format(format!("{} does not exist", config_path.display())))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Format(format!("{}: {e}", config_path.display())))?;
    let hp = HParams::from_hf_config(&config)?;
    let stored = super::convert::stored_type(&config);
    let tensors = layout(&hp, &config, quant, !hp.tied_embeddings, &|_| stored)?;
    Ok((config, text, hp, tensors))
}

/// Writes the synthetic GGUF `out` (whole or absent); `progress(done,
/// total)` in bytes after each piece.
pub fn synthesize(
    opts: &SynthOptions,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SynthReport, ConvertError> {
    let (config, config_text, hp, tensors) = plan(&opts.config_path, opts.quant)?;
    let dir = opts.config_path.parent().unwrap_or(Path::new("."));
    let name = config_name(&opts.config_path);
    let mut meta = hparams_metadata(
        &hp,
        &format!("{name} (synthetic)"),
        opts.quant,
        &format!("synthetic seed {}", opts.seed),
    );
    let donor = match &opts.tokenizer {
        Some(p) => GgufFile::open(p).map_err(|e| ModelError::Format(e.to_string()))?,
        None => default_tokenizer()?,
    };
    let tok = adapt_tokenizer(&donor, hp.n_vocab, &vision_specials(&config))?;
    let (tokens_kept, tokens_padded) = (tok.kept, tok.padded);
    meta.extend(tok.metadata);
    let template = read_text(&dir.join("chat_template.json"))?
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("chat_template")
                .and_then(|t| t.as_str())
                .map(String::from)
        });
    if let Some(t) = template {
        meta.retain(|(k, _)| k != "tokenizer.chat_template");
        meta.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
        meta.push((
            HF_CHAT_TEMPLATE.into(),
            Value::String(serde_json::json!({ "chat_template": t }).to_string()),
        ));
    }
    meta.push((HF_CONFIG.into(), Value::String(config_text)));
    for (key, file) in [
        (HF_PREPROCESSOR_CONFIG, "preprocessor_config.json"),
        (HF_GENERATION_CONFIG, "generation_config.json"),
    ] {
        if let Some(text) = read_text(&dir.join(file))? {
            meta.push((key.into(), Value::String(text)));
        }
    }
    meta.push((SYNTHETIC_KEY.into(), Value::Bool(true)));
    meta.push((SYNTHETIC_SEED_KEY.into(), Value::U64(opts.seed)));

    let mut total = 0u64;
    for t in &tensors {
        total = total.saturating_add(t.bytes()?);
    }
    write_atomically(
        &tensors,
        out,
        &mut |planned: Vec<PlannedTensor>, tmp: &Path| {
            let werr = |source: std::io::Error| ConvertError::Write {
                path: tmp.to_path_buf(),
                source,
            };
            let file = std::fs::File::create(tmp).map_err(werr)?;
            let mut w = GgufWriter::new(
                std::io::BufWriter::with_capacity(8 << 20, file),
                &meta,
                planned,
            )
            .map_err(werr)?;
            let mut done = 0u64;
            for t in &tensors {
                if opts.router_skew > 0.0 && t.name.ends_with("ffn_gate_inp.weight") {
                    let bytes = skewed_router(t, opts.seed, opts.router_skew);
                    w.write_tensor(&t.name, &bytes).map_err(werr)?;
                    done += bytes.len() as u64;
                    continue;
                }
                // Llama 3's rotary divisors are the config's, not noise.
                if let (super::convert::ROPE_FREQS, Some(f)) =
                    (t.name.as_str(), &hp.rope_freq_factors)
                {
                    let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
                    w.write_tensor(&t.name, &bytes).map_err(werr)?;
                    done += bytes.len() as u64;
                    continue;
                }
                w.write_tensor_with(&t.name, &mut |sink| {
                    write_tensor(t, opts.seed, sink, &mut |n| {
                        done += n;
                        progress(done, total);
                    })
                })
                .map_err(werr)?;
            }
            let buf = w.finish().map_err(werr)?;
            let file = buf.into_inner().map_err(|e| werr(e.into_error()))?;
            file.sync_all().map_err(werr)
        },
    )?;
    let file_bytes = std::fs::metadata(out).map_or(0, |m| m.len());
    Ok(SynthReport {
        tensors,
        weight_bytes: total,
        file_bytes,
        tokens_kept,
        tokens_padded,
    })
}

/// A name for the model: the config's folder, or the file's stem when the
/// file is not called config.json.
fn config_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem != "config" && !stem.is_empty() {
        return stem;
    }
    path.parent()
        .and_then(Path::file_name)
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
}

fn default_tokenizer() -> Result<GgufFile, ModelError> {
    GgufFile::from_bytes(DEFAULT_TOKENIZER, Path::new("smollm2-tokenizer.gguf"))
        .map_err(|e| ModelError::Format(format!("the built-in tokenizer: {e}")))
}

/// (id, name) of the tokens a vision-language model's prompts use.
fn vision_specials(config: &serde_json::Value) -> Vec<(usize, &'static str)> {
    [
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
    ]
    .into_iter()
    .filter_map(|(k, name)| {
        let id = config.get(k)?.as_u64()?;
        Some((usize::try_from(id).ok()?, name))
    })
    .collect()
}

struct AdaptedTokenizer {
    metadata: Vec<(String, Value)>,
    kept: usize,
    padded: usize,
}

const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_UNUSED: i32 = 5;

/// The donor's `tokenizer.*` metadata made to fit `n_vocab`: tokens past it
/// are cut (with the merges that need them and the special ids they held),
/// missing ones are padded with unused `[PAD…]` tokens, and the named
/// `specials` sit at their ids as control tokens.
fn adapt_tokenizer(
    donor: &GgufFile,
    n_vocab: usize,
    specials: &[(usize, &str)],
) -> Result<AdaptedTokenizer, ModelError> {
    let bad = |what: &str| ModelError::Format(format!("the donor tokenizer: {what}"));
    let array = |key: &str| donor.get(key).and_then(Value::as_array);
    let tokens_v = array("tokenizer.ggml.tokens").ok_or_else(|| bad("no tokenizer.ggml.tokens"))?;
    let mut tokens: Vec<String> = tokens_v
        .iter()
        .map(|v| {
            v.as_str()
                .map(String::from)
                .ok_or_else(|| bad("a token is not a string"))
        })
        .collect::<Result<_, _>>()?;
    let donor_n = tokens.len();
    let mut types: Vec<i32> = match array("tokenizer.ggml.token_type") {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
        None => vec![1; donor_n],
    };
    let mut scores: Option<Vec<f32>> = array("tokenizer.ggml.scores")
        .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect());
    if types.len() != donor_n || scores.as_ref().is_some_and(|s| s.len() != donor_n) {
        return Err(bad("token types or scores do not match the tokens"));
    }
    tokens.truncate(n_vocab);
    types.truncate(n_vocab);
    let kept = tokens.len();
    let padded = n_vocab - kept;
    for i in kept..n_vocab {
        tokens.push(format!("[PAD{i}]"));
        types.push(TOKEN_TYPE_UNUSED);
    }
    if let Some(s) = &mut scores {
        s.truncate(n_vocab);
        s.resize(n_vocab, -1e9);
    }
    for &(id, name) in specials {
        if id >= n_vocab || tokens[id] == name {
            continue;
        }
        // The name must stay unique: a copy elsewhere becomes unused.
        if let Some(j) = tokens.iter().position(|t| t == name) {
            tokens[j] = format!("[UNUSED{j}]");
            types[j] = TOKEN_TYPE_UNUSED;
        }
        tokens[id] = name.to_string();
        types[id] = TOKEN_TYPE_CONTROL;
    }
    let mut meta: Vec<(String, Value)> = Vec::new();
    let present: HashSet<&str> = tokens.iter().map(String::as_str).collect();
    for (key, value) in &donor.metadata {
        if !key.starts_with("tokenizer.") {
            continue;
        }
        let v = match key.as_str() {
            "tokenizer.ggml.tokens" | "tokenizer.ggml.token_type" | "tokenizer.ggml.scores" => {
                continue
            }
            "tokenizer.ggml.merges" => {
                let merges = value
                    .as_array()
                    .ok_or_else(|| bad("merges are not an array"))?;
                let kept: Vec<Value> = merges
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|m| match m.split_once(' ') {
                        Some((a, b)) => {
                            present.contains(a)
                                && present.contains(b)
                                && present.contains(format!("{a}{b}").as_str())
                        }
                        None => false,
                    })
                    .map(|m| Value::String(m.to_string()))
                    .collect();
                Value::Array(kept)
            }
            k if k.ends_with("_token_id") => match value.as_u64() {
                Some(id) if (id as usize) < n_vocab => value.clone(),
                _ => continue,
            },
            _ => value.clone(),
        };
        meta.push((key.clone(), v));
    }
    meta.push((
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    ));
    meta.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    ));
    if let Some(s) = scores {
        meta.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(s.into_iter().map(Value::F32).collect()),
        ));
    }
    Ok(AdaptedTokenizer {
        metadata: meta,
        kept,
        padded,
    })
}

/// A router (`n_expert × n_embd`, f32) whose expert of rank `r` in a
/// seeded order has its row scaled by `(r + 1)^-skew`: a larger row spreads
/// its logits wider, so it lands in the top-k far more often.
fn skewed_router(t: &TensorPlan, seed: u64, skew: f32) -> Vec<u8> {
    let (rows, cols) = (t.shape[0], *t.shape.last().unwrap_or(&1));
    let mut rng = Rng::new(piece_seed(seed, &t.name, u64::MAX));
    // A seeded permutation: which expert is hottest differs per layer.
    let mut rank: Vec<usize> = (0..rows).collect();
    for i in (1..rows).rev() {
        rank.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let std = 1.0 / (cols as f32).sqrt();
    let mut out = Vec::with_capacity(rows * cols * 4);
    for &r in &rank {
        let scale = std * ((r + 1) as f32).powf(-skew) * 3f32.sqrt();
        for _ in 0..cols {
            let v = (rng.unit() * 2.0 - 1.0) * scale;
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// SplitMix64: tiny, fast and good enough for weights nobody reads.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// A seed for piece `piece` of tensor `name`.
fn piece_seed(seed: u64, name: &str, piece: u64) -> u64 {
    let mut h = super::convert::Fnv::default();
    h.add(name.as_bytes());
    h.add(&seed.to_le_bytes());
    h.add(&piece.to_le_bytes());
    h.finish()
}

/// What a tensor's values look like.
#[derive(Clone, Copy, Debug)]
enum Fill {
    /// Every value 1 (norm weights).
    Ones,
    /// Zero mean, this standard deviation.
    Random(f32),
}

fn fill_of(t: &TensorPlan) -> Fill {
    let row = *t.shape.last().unwrap_or(&1) as f32;
    if t.shape.len() == 1 {
        if t.name.contains("norm") || t.name.contains(".ln") {
            Fill::Ones
        } else {
            Fill::Random(0.02)
        }
    } else {
        Fill::Random(1.0 / row.max(1.0).sqrt())
    }
}

/// Blocks per piece for a type: about [`PIECE_TARGET`] bytes.
fn piece_blocks(t: GgmlType) -> u64 {
    (PIECE_TARGET as u64 / t.block_bytes()).max(1)
}

/// Streams tensor `t`'s bytes into `sink`, 8 pieces at a time made in
/// parallel; returns the bytes written.
fn write_tensor(
    t: &TensorPlan,
    seed: u64,
    sink: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<u64> {
    let ty = t.ggml_type;
    let blocks = t.elems() / ty.block_elems();
    let per_piece = piece_blocks(ty);
    let pieces = blocks.div_ceil(per_piece);
    let fill = fill_of(t);
    let batch = rayon::current_num_threads().max(1) as u64 * 4;
    let mut written = 0u64;
    let mut first = 0u64;
    while first < pieces {
        let last = (first + batch).min(pieces);
        let made: Vec<Vec<u8>> = (first..last)
            .into_par_iter()
            .map(|p| {
                let n = per_piece.min(blocks - p * per_piece);
                let mut buf = vec![0u8; (n * ty.block_bytes()) as usize];
                let mut rng = Rng::new(piece_seed(seed, &t.name, p));
                make_blocks(ty, fill, &mut rng, &mut buf);
                buf
            })
            .collect();
        for buf in made {
            sink.write_all(&buf)?;
            written += buf.len() as u64;
            progress(buf.len() as u64);
        }
        first = last;
    }
    Ok(written)
}

fn put_f16(out: &mut [u8], v: f32) {
    out[..2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
}

/// Fills `out` (whole blocks of `ty`) with random codes whose block scales
/// give values of the wanted spread.
fn make_blocks(ty: GgmlType, fill: Fill, rng: &mut Rng, out: &mut [u8]) {
    let sigma = match fill {
        Fill::Ones => {
            let one: Vec<u8> = match ty {
                GgmlType::F32 => 1f32.to_le_bytes().to_vec(),
                GgmlType::F16 => half::f16::ONE.to_le_bytes().to_vec(),
                GgmlType::BF16 => half::bf16::ONE.to_le_bytes().to_vec(),
                // Norms are vectors, always f32; any other type gets
                // random values of unit spread.
                _ => {
                    make_blocks(ty, Fill::Random(1.0), rng, out);
                    return;
                }
            };
            for c in out.chunks_exact_mut(one.len()) {
                c.copy_from_slice(&one);
            }
            return;
        }
        Fill::Random(s) => s,
    };
    // Uniform values of standard deviation sigma: ±√3·sigma.
    let half_width = sigma * 3f32.sqrt();
    let value = |rng: &mut Rng| (rng.unit() * 2.0 - 1.0) * half_width;
    // Each block's scale varies by ±25 % around the one that gives sigma.
    let jitter = |rng: &mut Rng| 0.75 + 0.5 * rng.unit();
    match ty {
        GgmlType::F32 => {
            for c in out.chunks_exact_mut(4) {
                c.copy_from_slice(&value(rng).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in out.chunks_exact_mut(2) {
                put_f16(c, value(rng));
            }
        }
        GgmlType::BF16 => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(value(rng)).to_le_bytes());
            }
        }
        _ => {
            rng.fill(out);
            let bb = ty.block_bytes() as usize;
            for b in out.chunks_exact_mut(bb) {
                let j = jitter(rng);
                match ty {
                    // d, then 32 signed 8-bit codes: sd of the codes ≈ 73.9.
                    GgmlType::Q8_0 => put_f16(b, j * sigma / 73.9),
                    // d, 32 high bits, 32 low nibbles: value = d·(q − 16).
                    GgmlType::Q5_0 => put_f16(b, j * sigma / 9.23),
                    // d, dmin, 12 bytes of 6-bit scales and mins (random),
                    // 4-bit codes: value = d·sc·q − dmin·m; dmin = 7.5·d
                    // centres it, and its sd is ≈ 258·d.
                    GgmlType::Q4K => {
                        let d = j * sigma / 258.0;
                        put_f16(&mut b[0..2], d);
                        put_f16(&mut b[2..4], 7.5 * d);
                    }
                    // As Q4_K with 5-bit codes (mean 15.5, sd ≈ 540·d).
                    GgmlType::Q5K => {
                        let d = j * sigma / 540.0;
                        put_f16(&mut b[0..2], d);
                        put_f16(&mut b[2..4], 15.5 * d);
                    }
                    // 6-bit codes − 32 times signed 8-bit scales, then d
                    // last: sd ≈ 1365·d.
                    GgmlType::Q6K => put_f16(&mut b[bb - 2..], j * sigma / 1365.0),
                    // Formats the schemes never produce: zero them rather
                    // than guess their layout.
                    _ => b.fill(0),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(ty: GgmlType, fill: Fill, elems: usize) -> (f64, f64, bool) {
        let bytes = ty.bytes_for(elems as u64).unwrap() as usize;
        let mut buf = vec![0u8; bytes];
        make_blocks(ty, fill, &mut Rng::new(7), &mut buf);
        let q = candle_core::quantized::QTensor::new(
            candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Owned(buf),
                &candle_core::Device::Cpu,
                ty.to_candle(),
            )
            .unwrap(),
            (elems,),
        )
        .unwrap();
        let v: Vec<f32> = q
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt(), v.iter().all(|x| x.is_finite()))
    }

    #[test]
    fn every_type_has_the_wanted_spread() {
        let sigma = 1.0 / 64.0;
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ] {
            let (mean, sd, finite) = stats(ty, Fill::Random(sigma), 256 * 1024);
            assert!(finite, "{ty}");
            assert!(mean.abs() < 0.1 * sigma as f64, "{ty}: mean {mean}");
            let ratio = sd / sigma as f64;
            assert!((0.85..1.2).contains(&ratio), "{ty}: sd {sd} vs {sigma}");
        }
        let (mean, sd, _) = stats(GgmlType::F32, Fill::Ones, 1024);
        assert_eq!((mean, sd), (1.0, 0.0));
    }

    #[test]
    fn pieces_are_deterministic_and_distinct() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        Rng::new(piece_seed(1, "blk.0.attn_q.weight", 3)).fill(&mut a);
        Rng::new(piece_seed(1, "blk.0.attn_q.weight", 3)).fill(&mut b);
        assert_eq!(a, b);
        Rng::new(piece_seed(1, "blk.0.attn_q.weight", 4)).fill(&mut b);
        assert_ne!(a, b);
        Rng::new(piece_seed(2, "blk.0.attn_q.weight", 3)).fill(&mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn the_donor_tokenizer_is_cut_and_padded() {
        let donor = default_tokenizer().unwrap();
        let n = donor
            .get("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap()
            .len();
        // Cut: merges only over kept tokens, specials placed.
        let cut = adapt_tokenizer(&donor, 1000, &[(990, "<|image_pad|>")]).unwrap();
        assert_eq!((cut.kept, cut.padded), (1000, 0));
        let g = GgufFile::from_metadata(cut.metadata);
        let tok = crate::weights::tokenizer::TextTokenizer::from_gguf(&g).unwrap();
        assert_eq!(tok.vocab_size(), 1000);
        let ids = tok.encode("Hello world <|image_pad|>", false).unwrap();
        assert!(ids.iter().all(|&i| i < 1000));
        assert_eq!(*ids.last().unwrap(), 990);
        // Padded: the donor's tokens keep their ids.
        let pad = adapt_tokenizer(&donor, n + 100, &[]).unwrap();
        assert_eq!((pad.kept, pad.padded), (n, 100));
        let g = GgufFile::from_metadata(pad.metadata);
        let tok2 = crate::weights::tokenizer::TextTokenizer::from_gguf(&g).unwrap();
        let full = crate::weights::tokenizer::TextTokenizer::from_gguf(&donor).unwrap();
        let text = "The quick brown fox, 1234 times.";
        assert_eq!(
            tok2.encode(text, false).unwrap(),
            full.encode(text, false).unwrap()
        );
        assert_eq!(tok2.vocab_size(), n + 100);
    }
}
