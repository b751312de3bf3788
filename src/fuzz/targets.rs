//! The fuzz targets: what each runs on one input (in the child process), and
//! the valid inputs each starts from.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::chat::history::{ChatMessage, Conversation, History};
use crate::chat::{ChatTemplate, Message};
use crate::model::hparams::HParams;
use crate::placement::footprint::Footprint;
use crate::vision::preprocess::{self, ProcessorConfig, Rgb};
use crate::weights::gguf::GgufFile;
use crate::weights::tokenizer::TextTokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Target {
    /// GGUF header, metadata and tensor table; hyper-parameters, footprint,
    /// tokenizer and chat template from them.
    Gguf,
    /// A whole load of a (tiny) GGUF and two generated tokens.
    Model,
    /// A Hugging Face folder: config.json and a safetensors shard.
    Safetensors,
    /// Chat-template source, rendered over a conversation.
    Template,
    /// Image decoding and preprocessing.
    Image,
    /// preprocessor_config.json, then an image prepared with it.
    Processor,
    /// A saved conversation file.
    History,
    /// The window's settings file and the YAML config.
    Settings,
}

impl Target {
    pub const ALL: [Target; 8] = [
        Target::Gguf,
        Target::Model,
        Target::Safetensors,
        Target::Template,
        Target::Image,
        Target::Processor,
        Target::History,
        Target::Settings,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Gguf => "gguf",
            Target::Model => "model",
            Target::Safetensors => "safetensors",
            Target::Template => "template",
            Target::Image => "image",
            Target::Processor => "processor",
            Target::History => "history",
            Target::Settings => "settings",
        }
    }

    /// Whether inputs are text (mutated token by token) or binary.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            Target::Template | Target::Processor | Target::History | Target::Settings
        )
    }
}

/// Separates a Hugging Face input's config.json from its safetensors bytes.
pub const HF_SEPARATOR: &[u8] = b"\n--spillway-fuzz-safetensors--\n";

/// How far an input got and what stopped it, as one number: the signal that
/// guides mutation. Digits are left out of error text, so "claims 12
/// elements" and "claims 13 elements" are one outcome.
struct Progress {
    stage: u64,
    h: std::collections::hash_map::DefaultHasher,
}

impl Progress {
    fn new() -> Self {
        Progress {
            stage: 0,
            h: Default::default(),
        }
    }
    fn reached(&mut self) {
        self.stage += 1;
    }
    fn stopped(mut self, err: impl std::fmt::Display) -> u64 {
        let text: String = err
            .to_string()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(200)
            .collect();
        std::hash::Hash::hash(&text, &mut self.h);
        self.finish()
    }
    fn finish(mut self) -> u64 {
        std::hash::Hash::hash(&self.stage, &mut self.h);
        std::hash::Hasher::finish(&self.h)
    }
}

/// What one input did: the signature that guides mutation, and the error
/// that stopped it (none: it went all the way through).
#[derive(Debug)]
pub struct Outcome {
    pub signature: u64,
    pub error: Option<String>,
}

/// Runs `input` through `target`; every error is an acceptable outcome
/// (only a panic, an abort, a signal or a hang is a failure, and those end
/// the child process). `scratch` is a folder the target may write in.
pub fn run(target: Target, input: &[u8], scratch: &Path) -> Outcome {
    let mut p = Progress::new();
    let r = match target {
        Target::Gguf => gguf(input, &mut p),
        Target::Model => model(input, scratch, &mut p),
        Target::Safetensors => safetensors(input, scratch, &mut p),
        Target::Template => template(&String::from_utf8_lossy(input), &mut p),
        Target::Image => image(input, &mut p),
        Target::Processor => processor(input, &mut p),
        Target::History => history(input, scratch, &mut p),
        Target::Settings => settings(input, scratch, &mut p),
    };
    match r {
        Ok(()) => Outcome {
            signature: p.finish(),
            error: None,
        },
        Err(e) => Outcome {
            error: Some(e.to_string()),
            signature: p.stopped(e),
        },
    }
}

type R = anyhow::Result<()>;

fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "You are terse."),
        Message::new("user", "Hello there"),
        Message::new("assistant", "Hi."),
        Message::new("user", "What is in the picture?"),
    ]
}

fn gguf(input: &[u8], p: &mut Progress) -> R {
    let g = GgufFile::from_bytes(input, Path::new("fuzz.gguf"))?;
    p.reached();
    let hp = HParams::from_gguf(&g)?;
    p.reached();
    let context = hp.context_for(None)?;
    let fp = Footprint::from_gguf(&g, &hp, context, crate::engine::PROMPT_CHUNK);
    let _ = (fp.weights_bytes(), fp.kv_cache_bytes());
    p.reached();
    let tok = TextTokenizer::from_gguf(&g)?;
    p.reached();
    let ids = tok.encode("Hello, world! 12345 <|im_start|> ünïcødé", true)?;
    tok.decode(&ids, false)?;
    p.reached();
    if let Some(src) = &tok.chat_template {
        ChatTemplate::new(src, "<s>", "</s>")?.render(&conversation(), true)?;
        p.reached();
    }
    Ok(())
}

fn model(input: &[u8], scratch: &Path, p: &mut Progress) -> R {
    let path = scratch.join("fuzz-model.gguf");
    std::fs::write(&path, input)?;
    let mut opts = crate::engine::LoadOptions::new(&path);
    opts.placement.offload_dir = scratch.join("offload");
    opts.placement.mode = crate::placement::Mode::CpuOnly;
    opts.context_length = Some(256);
    let mut engine = crate::engine::Engine::load(&opts, &mut |_| {})?;
    p.reached();
    let prompt = engine.tokenizer().encode("Hello there", true)?;
    let params = crate::engine::GenerateParams {
        max_tokens: 2,
        ignore_eos: true,
        ..Default::default()
    };
    engine.generate(&prompt, &params, &AtomicBool::new(false), &mut |_| {})?;
    p.reached();
    if engine.vision().is_some() {
        let img = Rgb {
            width: 60,
            height: 44,
            data: vec![128; 60 * 44 * 3],
        };
        engine.prepare_image(&img, Some(64 * 64))?;
        p.reached();
    }
    Ok(())
}

fn safetensors(input: &[u8], scratch: &Path, p: &mut Progress) -> R {
    let dir = scratch.join("hf");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (config, weights) = match find(input, HF_SEPARATOR) {
        Some(at) => (&input[..at], &input[at + HF_SEPARATOR.len()..]),
        None => (input, &[][..]),
    };
    std::fs::write(dir.join("config.json"), config)?;
    std::fs::write(dir.join("model.safetensors"), weights)?;
    let json: serde_json::Value = serde_json::from_slice(config)?;
    p.reached();
    let fp = Footprint::from_hf_config(
        "fuzz".into(),
        &json,
        crate::placement::Quant::Q4KM,
        512,
        crate::engine::PROMPT_CHUNK,
    )?;
    let _ = (fp.weights_bytes(), fp.kv_cache_bytes());
    p.reached();
    let folder = crate::weights::hf::HfFolder::open(&dir)?;
    p.reached();
    if let Some(name) = folder.tensors.keys().next().cloned() {
        folder.read_f32(&name)?;
        p.reached();
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn template(src: &str, p: &mut Progress) -> R {
    let t = ChatTemplate::new(src, "<s>", "</s>")?;
    p.reached();
    t.render(&conversation(), true)?;
    p.reached();
    Ok(())
}

fn image(input: &[u8], p: &mut Progress) -> R {
    let rgb = preprocess::decode(input, "fuzz image")?;
    p.reached();
    let mut cfg = ProcessorConfig::default();
    cfg.cap_pixels(1 << 20);
    preprocess::prepare(&rgb, &cfg)?;
    p.reached();
    Ok(())
}

fn processor(input: &[u8], p: &mut Progress) -> R {
    let json: serde_json::Value = serde_json::from_slice(input)?;
    p.reached();
    let mut cfg = ProcessorConfig::from_json(&json);
    cfg.cap_pixels(crate::placement::footprint::DEFAULT_MAX_IMAGE_PIXELS);
    for (h, w) in [(1, 1), (28, 28), (480, 640), (16_384, 100), (3, 600)] {
        let _ = cfg.tokens_for(h, w);
    }
    let img = Rgb {
        width: 90,
        height: 61,
        data: (0..90 * 61 * 3).map(|i| (i % 251) as u8).collect(),
    };
    preprocess::prepare(&img, &cfg)?;
    p.reached();
    Ok(())
}

fn history(input: &[u8], scratch: &Path, p: &mut Progress) -> R {
    let dir = scratch.join("history");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("c1.json"), input)?;
    let h = History::open(&dir)?;
    let (convs, damaged) = h.load_all();
    if !damaged.is_empty() {
        anyhow::bail!("damaged");
    }
    p.reached();
    for mut c in convs {
        c.title_from_first_message();
        let _ = c.template_messages();
        h.save(&c)?;
        h.delete(&c.id)?;
    }
    p.reached();
    Ok(())
}

/// The input as Spillway's YAML config and as the window's settings file:
/// it passes when either reads it.
fn settings(input: &[u8], scratch: &Path, p: &mut Progress) -> R {
    let text = String::from_utf8_lossy(input);
    let config = crate::config::Config::defaults()?;
    let layered = crate::config::Config::from_layers(&[
        (crate::config::DEFAULTS_YAML, "defaults"),
        (&text, "fuzz.yaml"),
    ]);
    if layered.is_ok() {
        p.reached();
    }
    let path = scratch.join("settings.yaml");
    std::fs::write(&path, input)?;
    let loaded = crate::ui::settings::Settings::load(&path, &config).map_err(anyhow::Error::msg);
    match loaded {
        Ok(s) => {
            p.reached();
            let _ = (s.placement_request(), s.sampling(), s.mode(), s.quant());
            s.save(&path).map_err(anyhow::Error::msg)?;
            Ok(())
        }
        Err(_) if layered.is_ok() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The valid inputs a target's mutations start from.
pub fn seeds(target: Target) -> anyhow::Result<Vec<Vec<u8>>> {
    const MISTRAL_CONFIG: &str = include_str!("../../tests/fixtures/mistral_tiny/config.json");
    const QWEN_VL_CONFIG: &str = include_str!("../../tests/fixtures/qwen2_5_vl_tiny/config.json");
    const QWEN_VL_PREPROCESSOR: &str =
        include_str!("../../tests/fixtures/qwen2_5_vl_tiny/preprocessor_config.json");
    const QWEN_TEXT_CONFIG: &str = include_str!("../../tests/fixtures/qwen2_tiny_text/config.json");
    Ok(match target {
        Target::Gguf | Target::Model => {
            let dir = tempfile::tempdir()?;
            let mut out = Vec::new();
            for (i, (config, quant, extra)) in [
                (MISTRAL_CONFIG, crate::placement::Quant::Q8_0, None),
                (
                    QWEN_VL_CONFIG,
                    crate::placement::Quant::Q4KM,
                    Some(QWEN_VL_PREPROCESSOR),
                ),
                (QWEN_TEXT_CONFIG, crate::placement::Quant::F16, None),
            ]
            .into_iter()
            .enumerate()
            {
                let sub = dir.path().join(i.to_string());
                std::fs::create_dir_all(&sub)?;
                std::fs::write(sub.join("config.json"), config)?;
                if let Some(pre) = extra {
                    std::fs::write(sub.join("preprocessor_config.json"), pre)?;
                }
                let opts = crate::weights::synth::SynthOptions {
                    config_path: sub.join("config.json"),
                    quant,
                    seed: i as u64,
                    tokenizer: None,
                    router_skew: 0.0,
                };
                let file = sub.join("model.gguf");
                crate::weights::synth::synthesize(&opts, &file, &mut |_, _| {})?;
                out.push(std::fs::read(&file)?);
            }
            out
        }
        Target::Safetensors => {
            let mut out = Vec::new();
            for (config, weights) in [
                (
                    MISTRAL_CONFIG,
                    &include_bytes!("../../tests/fixtures/mistral_tiny/model.safetensors")[..],
                ),
                (
                    QWEN_TEXT_CONFIG,
                    &include_bytes!("../../tests/fixtures/qwen2_tiny_text/model.safetensors")[..],
                ),
            ] {
                let mut v = config.as_bytes().to_vec();
                v.extend_from_slice(HF_SEPARATOR);
                v.extend_from_slice(weights);
                out.push(v);
            }
            out
        }
        Target::Template => {
            let mut out = vec![
                "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}".as_bytes().to_vec(),
            ];
            for cfg in [
                include_str!("../../tests/fixtures/mistral_tiny/tokenizer_config.json"),
                include_str!("../../tests/fixtures/qwen2_5_vl_tiny/tokenizer_config.json"),
            ] {
                let v: serde_json::Value = serde_json::from_str(cfg)?;
                if let Some(t) = v.get("chat_template").and_then(|t| t.as_str()) {
                    out.push(t.as_bytes().to_vec());
                }
            }
            let v: serde_json::Value = serde_json::from_str(include_str!(
                "../../tests/fixtures/qwen2_5_vl_tiny/chat_template.json"
            ))?;
            if let Some(t) = v.get("chat_template").and_then(|t| t.as_str()) {
                out.push(t.as_bytes().to_vec());
            }
            out
        }
        Target::Image => {
            let mut out = vec![
                include_bytes!("../../tests/fixtures/images/gray.png").to_vec(),
                include_bytes!("../../tests/fixtures/images/rgba.png").to_vec(),
                include_bytes!("../../tests/fixtures/images/odd.png").to_vec(),
            ];
            let img = image::RgbImage::from_fn(37, 23, |x, y| {
                image::Rgb([(x * 7) as u8, (y * 11) as u8, (x ^ y) as u8])
            });
            for format in [
                image::ImageFormat::Jpeg,
                image::ImageFormat::WebP,
                image::ImageFormat::Bmp,
                image::ImageFormat::Gif,
            ] {
                let mut buf = std::io::Cursor::new(Vec::new());
                image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut buf, format)?;
                out.push(buf.into_inner());
            }
            out
        }
        Target::Processor => vec![
            QWEN_VL_PREPROCESSOR.as_bytes().to_vec(),
            include_bytes!("../../tests/fixtures/configs/robobrain2.0-7b/preprocessor_config.json")
                .to_vec(),
        ],
        Target::History => {
            let mut c = Conversation::new("Be brief.");
            c.messages.push(ChatMessage::user("What is 2+2?"));
            c.messages.push(ChatMessage::assistant("4"));
            vec![serde_json::to_vec_pretty(&c)?]
        }
        Target::Settings => {
            let s = crate::ui::settings::Settings::from_config(&crate::config::Config::defaults()?);
            vec![
                yaml_serde::to_string(&s)?.into_bytes(),
                crate::config::DEFAULTS_YAML.as_bytes().to_vec(),
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed is a valid input that goes all the way through its
    /// target: mutations start from the deepest paths.
    #[test]
    fn every_seed_passes_its_target() {
        let scratch = tempfile::tempdir().unwrap();
        for t in Target::ALL {
            for (i, seed) in seeds(t).unwrap().iter().enumerate() {
                let o = run(t, seed, scratch.path());
                assert_eq!(o.error, None, "{} seed {i}", t.name());
            }
        }
    }
}
