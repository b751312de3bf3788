//! The engine's vision half: the tower loaded from a converted Qwen2.5-VL
//! or Qwen3-VL GGUF, prompts with images (each `<|image_pad|>` expanded to its image's
//! tokens, M-RoPE positions for the whole sequence), image embeddings
//! computed once per image and kept for the next turn.

use std::path::{Path, PathBuf};

use crate::chat::template::Message;
use crate::model::ModelError;
use crate::vision::preprocess::{self, Prepared, ProcessorConfig, Rgb};
use crate::vision::{tower::VisionTower, VisionConfig, VisionTokens};
use crate::weights::convert::{HF_CONFIG, HF_PREPROCESSOR_CONFIG};
use crate::weights::gguf::{GgufFile, Value};
use crate::weights::read::read_qtensor;

use super::{Engine, EngineError};

/// Image embeddings kept for this many distinct images.
const EMBED_CACHE: usize = 8;

pub struct VisionModel {
    pub tower: VisionTower,
    pub processor: ProcessorConfig,
    pub tokens: VisionTokens,
    /// Recently encoded images: (content hash, `tokens × n_embd` values).
    embeds: Vec<(u64, std::sync::Arc<Vec<f32>>)>,
}

/// One image of a prompt.
#[derive(Debug, Clone)]
pub struct PromptImage {
    pub prepared: Prepared,
    /// Identifies the image's pixels (the KV cache reuses a prefix only
    /// where its images are the same).
    pub hash: u64,
}

impl PromptImage {
    pub fn new(prepared: Prepared) -> Self {
        let mut h = crate::weights::convert::Fnv::default();
        for g in prepared.grid_thw {
            h.add(&(g as u64).to_le_bytes());
        }
        // In pieces through a small buffer, not a copy of every value.
        let mut buf = [0u8; 4096];
        for chunk in prepared.pixel_values.chunks(buf.len() / 4) {
            for (b, v) in buf.chunks_exact_mut(4).zip(chunk) {
                b.copy_from_slice(&v.to_le_bytes());
            }
            h.add(&buf[..chunk.len() * 4]);
        }
        PromptImage {
            hash: h.finish(),
            prepared,
        }
    }
}

/// A tokenized prompt and the images its `<|image_pad|>` runs stand for.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    pub tokens: Vec<u32>,
    pub images: Vec<PromptImage>,
}

impl Prompt {
    pub fn text(tokens: Vec<u32>) -> Self {
        Prompt {
            tokens,
            images: Vec::new(),
        }
    }
}

fn json_meta(g: &GgufFile, key: &str) -> Option<serde_json::Value> {
    serde_json::from_str(g.get(key).and_then(Value::as_str)?).ok()
}

/// The vision half of a GGUF converted from a Qwen2.5-VL or Qwen3-VL
/// folder, when it has one, or else of the llama.cpp `mmproj` file given
/// (a Qwen3-VL tower), on `device`. Under a quantized scheme 16-bit
/// matrices stay f16 in memory; as stored they are widened to f32 (exact
/// results).
#[allow(clippy::too_many_arguments)]
pub fn load(
    g: &GgufFile,
    file: &std::fs::File,
    mmproj: Option<&Path>,
    tokenizer: &crate::weights::tokenizer::TextTokenizer,
    n_embd: usize,
    device: &candle_core::Device,
    host_kernels: bool,
) -> Result<Option<VisionModel>, ModelError> {
    if g.tensor("v.patch_embd.weight").is_none() {
        return match mmproj {
            Some(p) => load_mmproj(p, tokenizer, n_embd, device, host_kernels).map(Some),
            None => Ok(None),
        };
    }
    // Converted at 4/8/16 bits: the tower's 16-bit matrices stay 16-bit.
    let half_weights = g
        .get("spillway.quant")
        .and_then(Value::as_str)
        .is_some_and(|q| q != "none");
    let config = json_meta(g, HF_CONFIG).ok_or_else(|| {
        ModelError::Format("the model has a vision tower but no config.json metadata".into())
    })?;
    let cfg = VisionConfig::from_config(&config, n_embd)?;
    let processor = json_meta(g, HF_PREPROCESSOR_CONFIG)
        .map(|p| ProcessorConfig::from_json(&p))
        .unwrap_or_default();
    check_processor(&processor, &cfg)?;
    let mut get = |name: &str| -> Result<candle_core::quantized::QTensor, ModelError> {
        let info = g
            .tensor(name)
            .ok_or_else(|| ModelError::Format(format!("tensor {name} is missing")))?;
        Ok(read_qtensor(file, info)?)
    };
    let tower = VisionTower::load(cfg, &mut get, device, half_weights, host_kernels)?;
    Ok(Some(VisionModel {
        tower,
        processor,
        tokens: VisionTokens::from_config(&config),
        embeds: Vec::new(),
    }))
}

fn check_processor(processor: &ProcessorConfig, cfg: &VisionConfig) -> Result<(), ModelError> {
    if processor.patch_values() != cfg.patch_values() || processor.merge_size != cfg.merge_size {
        return Err(ModelError::Format(format!(
            "preprocessor_config.json (patch {}, merge {}) does not fit the vision tower (patch {}, merge {})",
            processor.patch_size, processor.merge_size, cfg.patch_size, cfg.merge_size
        )));
    }
    Ok(())
}

/// The llama.cpp `mmproj` file beside a model file, when there is one:
/// `mmproj*.gguf` in its folder (the first by name when there are several).
pub fn find_mmproj(model: &Path) -> Option<PathBuf> {
    let dir = match model.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut found: Vec<PathBuf> = crate::weights::files_with_extension(dir, "gguf")
        .ok()?
        .into_iter()
        .filter(|p| is_mmproj_name(p))
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Whether a file's name marks it as a llama.cpp vision projector.
pub fn is_mmproj_name(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.to_ascii_lowercase().starts_with("mmproj"))
}

/// A llama.cpp `mmproj` GGUF of a Qwen3-VL (`clip`, projector type
/// `qwen3vl_merger`, as its `convert_hf_to_gguf.py --mmproj` writes it):
/// the tower's shape from the `clip.vision.*` keys, tensors renamed to
/// Spillway's (`v.post_ln` → the merger's norm, `mm.0`/`mm.2` → its
/// layers, `v.deepstack.{block}` → the k-th DeepStack merger) and the two
/// temporal halves of the patch embedding (`v.patch_embd.weight`,
/// `.weight.1`) joined into one matrix; the image tokens' ids from the
/// model's own vocabulary.
fn load_mmproj(
    path: &Path,
    tokenizer: &crate::weights::tokenizer::TextTokenizer,
    n_embd: usize,
    device: &candle_core::Device,
    host_kernels: bool,
) -> Result<VisionModel, ModelError> {
    let bad = |what: String| ModelError::Format(format!("{}: {what}", path.display()));
    let g = GgufFile::open(path).map_err(|e| bad(e.to_string()))?;
    if g.architecture() != Some("clip") {
        return Err(bad(format!(
            "not a vision projector (architecture {:?}, expected clip)",
            g.architecture().unwrap_or("none")
        )));
    }
    let projector = g
        .get("clip.projector_type")
        .or_else(|| g.get("clip.vision.projector_type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if projector != "qwen3vl_merger" {
        return Err(bad(format!(
            "projector type {projector:?} is not supported (Qwen3-VL's qwen3vl_merger is; Qwen2.5-VL models load from their Hugging Face folder)"
        )));
    }
    let key = |k: &str| -> Result<u64, ModelError> {
        g.get(&format!("clip.vision.{k}"))
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(format!("clip.vision.{k} is missing")))
    };
    let depth = key("block_count")?;
    let deepstack: Vec<usize> = g
        .get("clip.vision.is_deepstack_layers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .enumerate()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(i, _)| i)
                .collect()
        })
        .unwrap_or_default();
    let positions = g
        .tensor("v.position_embd.weight")
        .and_then(|t| t.shape.first().copied())
        .ok_or_else(|| bad("tensor v.position_embd.weight is missing".into()))?;
    let out_hidden = key("projection_dim").unwrap_or(n_embd as u64);
    let config = serde_json::json!({
        "model_type": "qwen3_vl",
        "vision_config": {
            "depth": depth,
            "hidden_size": key("embedding_length")?,
            "intermediate_size": key("feed_forward_length")?,
            "num_heads": key("attention.head_count")?,
            "patch_size": key("patch_size")?,
            "spatial_merge_size": key("spatial_merge_size").unwrap_or(2),
            "temporal_patch_size": 2,
            "num_position_embeddings": positions,
            "out_hidden_size": out_hidden,
            "deepstack_visual_indexes": deepstack,
        }
    });
    let cfg = VisionConfig::from_config(&config, n_embd)?;
    if cfg.out_hidden != n_embd {
        return Err(bad(format!(
            "the projector gives {}-wide embeddings, the model takes {n_embd}",
            cfg.out_hidden
        )));
    }
    let triple = |k: &str| -> Option<serde_json::Value> {
        let a = g.get(&format!("clip.vision.{k}"))?.as_array()?;
        Some(serde_json::Value::Array(
            a.iter()
                .filter_map(|v| v.as_f64().map(serde_json::Value::from))
                .collect(),
        ))
    };
    let mut pp = serde_json::json!({
        "patch_size": cfg.patch_size,
        "merge_size": cfg.merge_size,
        "temporal_patch_size": cfg.temporal_patch_size,
        // Qwen3-VL's processor: 256 to 16384 patches of 16.
        "min_pixels": 65_536,
        "max_pixels": 16_777_216,
    });
    for (k, name) in [("image_mean", "image_mean"), ("image_std", "image_std")] {
        if let Some(v) = triple(k) {
            pp[name] = v;
        }
    }
    for (k, name) in [
        ("image_min_pixels", "min_pixels"),
        ("image_max_pixels", "max_pixels"),
    ] {
        if let Ok(v) = key(k) {
            pp[name] = v.into();
        }
    }
    let processor = ProcessorConfig::from_json(&pp);
    check_processor(&processor, &cfg)?;
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let read = |name: &str| -> Result<candle_core::quantized::QTensor, ModelError> {
        let info = g
            .tensor(name)
            .ok_or_else(|| bad(format!("tensor {name} is missing")))?;
        Ok(read_qtensor(&file, info)?)
    };
    let blocks = cfg.deepstack_blocks.clone();
    let patch_values = cfg.patch_values();
    let mut get = |name: &str| -> Result<candle_core::quantized::QTensor, ModelError> {
        if name == "v.patch_embd.weight" {
            // Two Conv2D kernels (out, 3, p, p), one per frame → the
            // (out, 3·2·p·p) matrix, channel-major then frame.
            let (a, b) = (read(name)?, read("v.patch_embd.weight.1")?);
            let cpu = candle_core::Device::Cpu;
            let (a, b) = (a.dequantize(&cpu)?, b.dequantize(&cpu)?);
            let out = a.dim(0)?;
            if a.elem_count() * 2 != out * patch_values || a.dims() != b.dims() {
                return Err(bad(format!(
                    "patch embedding kernels of shapes {:?} and {:?} do not make {out}×{patch_values}",
                    a.dims(),
                    b.dims()
                )));
            }
            let (a, b) = (a.reshape((out, 3, 1, ()))?, b.reshape((out, 3, 1, ()))?);
            let joined = candle_core::Tensor::cat(&[a, b], 2)?.reshape((out, patch_values))?;
            return Ok(candle_core::quantized::QTensor::quantize(
                &joined,
                candle_core::quantized::GgmlDType::F32,
            )?);
        }
        let renamed = if let Some(rest) = name.strip_prefix("v.merger.") {
            let (part, kind) = rest.split_once('.').unwrap_or((rest, ""));
            match part {
                "norm" => format!("v.post_ln.{kind}"),
                "fc1" => format!("mm.0.{kind}"),
                "fc2" => format!("mm.2.{kind}"),
                _ => name.to_string(),
            }
        } else if let Some(rest) = name.strip_prefix("v.deepstack.") {
            let (k, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let block = k
                .parse::<usize>()
                .ok()
                .and_then(|k| blocks.get(k).copied())
                .ok_or_else(|| bad(format!("no DeepStack block for {name}")))?;
            format!("v.deepstack.{block}.{tail}")
        } else {
            name.to_string()
        };
        read(&renamed)
    };
    let tower = VisionTower::load(cfg, &mut get, device, false, host_kernels)?;
    let id = |t: &str| -> Result<u32, ModelError> {
        match tokenizer.encode(t, false).as_deref() {
            Ok([id]) => Ok(*id),
            _ => Err(ModelError::Format(format!(
                "the model's vocabulary has no {t} token for the projector's images"
            ))),
        }
    };
    Ok(VisionModel {
        tower,
        processor,
        tokens: VisionTokens {
            image_pad: id("<|image_pad|>")?,
            vision_start: id("<|vision_start|>")?,
            vision_end: id("<|vision_end|>")?,
        },
        embeds: Vec::new(),
    })
}

/// What an image content part names (`{"type": "image", "path": …}`, or
/// `image` / `image_url` holding a string or `{"url": …}`): `None` when the
/// part is not an image, an error when it names nothing.
pub fn image_part_location(p: &serde_json::Value) -> Option<Result<String, String>> {
    let ty = p.get("type").and_then(|t| t.as_str());
    let is_image = ty == Some("image")
        || ty == Some("image_url")
        || (ty.is_none() && (p.get("image").is_some() || p.get("image_url").is_some()));
    if !is_image {
        return None;
    }
    Some(
        ["path", "image", "image_url"]
            .iter()
            .find_map(|k| match p.get(*k) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => {
                    o.get("url").and_then(|u| u.as_str()).map(str::to_string)
                }
                _ => None,
            })
            .ok_or_else(|| "an image part has no path".to_string()),
    )
}

/// Where an image of a message comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    File(PathBuf),
    /// A `data:` URL (base64), as the OpenAI API sends images.
    Data(String),
}

impl ImageSource {
    pub fn load(&self) -> Result<Rgb, preprocess::ImageError> {
        match self {
            ImageSource::File(p) => preprocess::load(p),
            ImageSource::Data(url) => preprocess::decode_data_url(url),
        }
    }
}

/// The images of a conversation, in order: content parts of type `image` /
/// `image_url` (or with an `image`/`image_url` key) holding a path (relative
/// ones resolved against `base`), a `file://` URL or a `data:` URL. Remote
/// URLs are refused: nothing is downloaded behind the user's back.
pub fn image_sources(messages: &[Message], base: &Path) -> Result<Vec<ImageSource>, String> {
    let mut out = Vec::new();
    for m in messages {
        let Some(parts) = m.content.as_array() else {
            continue;
        };
        for p in parts {
            let Some(raw) = image_part_location(p) else {
                continue;
            };
            let raw = raw?;
            if raw.starts_with("data:") {
                out.push(ImageSource::Data(raw));
                continue;
            }
            if raw.starts_with("http://") || raw.starts_with("https://") {
                return Err(format!(
                    "image {raw}: only local files and data: URLs are read (download it first)"
                ));
            }
            let path = PathBuf::from(raw.strip_prefix("file://").unwrap_or(&raw));
            out.push(ImageSource::File(if path.is_absolute() {
                path
            } else {
                base.join(path)
            }));
        }
    }
    Ok(out)
}

impl Engine {
    /// Runs the vision tower where the plan puts it: on the GPU tier's
    /// device when it has one and the plan says so, else on the CPU. Moving
    /// it reads its weights again from the model file.
    pub(super) fn place_vision(
        &mut self,
        tier: Option<crate::placement::Tier>,
    ) -> Result<(), EngineError> {
        let Some(v) = &self.vision else {
            return Ok(());
        };
        let target = match tier {
            Some(crate::placement::Tier::Gpu) => self
                .store
                .gpu()
                .and_then(|g| g.device.clone())
                .unwrap_or(candle_core::Device::Cpu),
            _ => candle_core::Device::Cpu,
        };
        // On the GPU tier (simulated ones too) candle's ops, else
        // Spillway's kernels.
        let host = !matches!(tier, Some(crate::placement::Tier::Gpu));
        if v.tower.device().same_device(&target)
            && v.tower.on_host_kernels() == VisionTower::host_for(&target, host)
        {
            return Ok(());
        }
        let file = std::fs::File::open(&self.gguf.path).map_err(|e| {
            EngineError::Invalid(format!("cannot open {}: {e}", self.gguf.path.display()))
        })?;
        let n_embd = self.model.hp.n_embd;
        // The old tower goes first: both need not fit at once.
        let embeds = self.vision.take().map(|v| v.embeds).unwrap_or_default();
        let mut moved = load(
            &self.gguf,
            &file,
            self.mmproj.as_deref(),
            &self.tokenizer,
            n_embd,
            &target,
            host,
        )?;
        if let Some(m) = &mut moved {
            m.embeds = embeds;
        }
        self.vision = moved;
        Ok(())
    }

    /// Whether the model reads images.
    pub fn vision(&self) -> Option<&VisionModel> {
        self.vision.as_ref()
    }

    /// Resizes and cuts an image as this model's processor does;
    /// `max_pixels` (when given) lowers the processor's bound.
    pub fn prepare_image(
        &self,
        img: &Rgb,
        max_pixels: Option<usize>,
    ) -> Result<PromptImage, EngineError> {
        let v = self.vision.as_ref().ok_or_else(|| {
            EngineError::Invalid("this model does not read images (it has no vision tower)".into())
        })?;
        let mut cfg = v.processor.clone();
        if let Some(m) = max_pixels {
            cfg.cap_pixels(m);
        }
        let prepared =
            preprocess::prepare(img, &cfg).map_err(|e| EngineError::Invalid(e.to_string()))?;
        Ok(PromptImage::new(prepared))
    }

    /// Renders `messages` (image parts in them) and tokenizes the result
    /// with each image's `<|image_pad|>` expanded; `suffix` is appended
    /// after the generation prompt (RoboBrain's `<think>`).
    pub fn chat_prompt(
        &self,
        messages: &[Message],
        images: Vec<PromptImage>,
        suffix: &str,
    ) -> Result<Prompt, EngineError> {
        let template = self
            .template
            .as_ref()
            .ok_or(crate::chat::template::TemplateError::Missing)?;
        let mut text = template.render(messages, true)?;
        text.push_str(suffix);
        let tokens = self.tokenizer.encode(&text, false)?;
        if images.is_empty() {
            return Ok(Prompt::text(tokens));
        }
        let v = self.vision.as_ref().ok_or_else(|| {
            EngineError::Invalid("this model does not read images (it has no vision tower)".into())
        })?;
        let counts: Vec<usize> = images
            .iter()
            .map(|i| i.prepared.tokens(v.processor.merge_size))
            .collect();
        let tokens = crate::vision::expand_image_pads(&tokens, v.tokens.image_pad, &counts)
            .map_err(EngineError::Invalid)?;
        Ok(Prompt { tokens, images })
    }

    /// The image's embeddings (`tokens × n_embd`), then its DeepStack
    /// features (Qwen3-VL; each `tokens × n_embd`, in the order of the text
    /// layers they are added after), from the cache when it was encoded
    /// before.
    pub fn image_embeddings(
        &mut self,
        image: &PromptImage,
    ) -> Result<std::sync::Arc<Vec<f32>>, EngineError> {
        let v = self
            .vision
            .as_mut()
            .ok_or_else(|| EngineError::Invalid("this model does not read images".into()))?;
        if let Some(i) = v.embeds.iter().position(|(h, _)| *h == image.hash) {
            let e = v.embeds.remove(i);
            v.embeds.push(e.clone());
            return Ok(e.1);
        }
        let p = &image.prepared;
        let out = v.tower.encode(&p.pixel_values, p.grid_thw, None)?;
        let mut values = Vec::new();
        for t in std::iter::once(&out.embeds).chain(&out.deepstack) {
            values.extend(
                t.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(ModelError::from)?,
            );
        }
        let values = std::sync::Arc::new(values);
        if v.embeds.len() >= EMBED_CACHE {
            v.embeds.remove(0);
        }
        v.embeds.push((image.hash, values.clone()));
        Ok(values)
    }

    /// Rotary positions of a whole prompt (`None` for text models).
    pub fn prompt_positions(&self, prompt: &Prompt) -> Result<Option<Vec<[u32; 3]>>, EngineError> {
        if !prompt.images.is_empty() && self.vision.is_none() {
            return Err(EngineError::Invalid(
                "this model does not read images (it has no vision tower)".into(),
            ));
        }
        if !self.model.hp.is_multimodal() {
            if !prompt.images.is_empty() {
                return Err(EngineError::Invalid(
                    "this model does not read images (it has no vision tower)".into(),
                ));
            }
            return Ok(None);
        }
        let (image_pad, merge) = match &self.vision {
            Some(v) => (v.tokens.image_pad, v.processor.merge_size),
            // A Qwen2.5-VL text half without its tower: no image tokens.
            None => (u32::MAX, 2),
        };
        let grids: Vec<[usize; 3]> = prompt.images.iter().map(|i| i.prepared.grid_thw).collect();
        let (p, _) = crate::vision::mrope_positions(&prompt.tokens, image_pad, &grids, merge)
            .map_err(EngineError::Invalid)?;
        Ok(Some(p))
    }

    /// Where each image's tokens start in `prompt`.
    pub(super) fn image_starts(&self, prompt: &Prompt) -> Vec<usize> {
        let Some(v) = &self.vision else {
            return Vec::new();
        };
        let mut starts = Vec::new();
        let mut i = 0;
        for img in &prompt.images {
            while i < prompt.tokens.len() && prompt.tokens[i] != v.tokens.image_pad {
                i += 1;
            }
            starts.push(i);
            i += img.prepared.tokens(v.processor.merge_size);
        }
        starts
    }

    /// Logits at every position of `prompt` (`tokens × vocab`), from an
    /// empty cache (parity checks); the cache is emptied again after.
    pub fn logits_all_prompt(&mut self, prompt: &Prompt) -> Result<Vec<f32>, EngineError> {
        self.reset();
        let positions = self.prompt_positions(prompt)?;
        let never = std::sync::atomic::AtomicBool::new(false);
        let images: Vec<(usize, &PromptImage)> = self
            .image_starts(prompt)
            .into_iter()
            .zip(&prompt.images)
            .collect();
        let out = self.feed_prompt(
            &prompt.tokens,
            positions.as_deref(),
            &images,
            crate::model::transformer::LogitsFor::All,
            &never,
        );
        self.reset();
        Ok(out?.unwrap_or_default())
    }
}
