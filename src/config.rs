//! Configuration: the YAML defaults in `config/config.yaml` (embedded in the
//! binary) merged with a user's file, validated into a typed [`Config`].
//! Only `main`/CLI code sees the raw file; everything else gets `Config`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::placement::{Mode, Quant};

pub const DEFAULTS_YAML: &str = include_str!("../config/config.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationDefaults {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub seed: u64,
}

/// The precision activations are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ComputeDType {
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "bf16")]
    BF16,
}

impl ComputeDType {
    /// Parses Spillway's names and the seed project's (`float16`,
    /// `torch.bfloat16`, …); `auto` is `None`: the engine's choice (f32 on
    /// the CPU).
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        let t = s.trim().to_ascii_lowercase();
        Ok(Some(match t.strip_prefix("torch.").unwrap_or(&t) {
            "auto" => return Ok(None),
            "f32" | "fp32" | "float32" | "float" => ComputeDType::F32,
            "f16" | "fp16" | "float16" | "half" => ComputeDType::F16,
            "bf16" | "bfloat16" => ComputeDType::BF16,
            _ => {
                return Err(format!(
                    "unknown dtype '{s}' (auto, float32, float16 or bfloat16)"
                ))
            }
        }))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The model to open at start: a path (or, with Hugging Face support, a
    /// repo id). `model.name`.
    pub model: Option<String>,
    /// `offload.mode`, or the seed project's `model.device_map`.
    pub mode: Mode,
    /// `model.quant`, or the seed project's `load_in_4bit` / `load_in_8bit`.
    pub quant: Quant,
    /// `model.dtype`; `None` is auto.
    pub dtype: Option<ComputeDType>,
    pub context_length: Option<usize>,
    pub generation: GenerationDefaults,
    pub offload_folder: PathBuf,
    pub copy_disk_layers: bool,
    pub threads: Option<usize>,
    /// `runtime.cache_type_k` / `cache_type_v`: how the KV cache stores
    /// keys and values.
    pub kv_types: crate::kernels::kv::KvTypes,
}

/// The file as written: every key optional, so a user's file may hold only
/// what it changes. Unknown keys are errors (a typo must not pass silently).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    model: RawModel,
    #[serde(default)]
    generation: RawGeneration,
    #[serde(default)]
    offload: RawOffload,
    #[serde(default)]
    runtime: RawRuntime,
}

/// Tells an explicit `null` (Some(None): back to the default) from an absent
/// key (None: keep the earlier layer's value).
fn explicit<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default, deserialize_with = "explicit")]
    context_length: Option<Option<usize>>,
    #[serde(default, deserialize_with = "explicit")]
    name: Option<Option<String>>,
    quant: Option<String>,
    dtype: Option<String>,
    /// The seed project's keys, mapped onto Spillway's.
    device_map: Option<yaml_serde::Value>,
    load_in_4bit: Option<bool>,
    load_in_8bit: Option<bool>,
}

impl RawModel {
    /// `quant`, or what `load_in_4bit` / `load_in_8bit` ask for.
    fn quant(&self) -> Result<Option<Quant>, String> {
        let own = self.quant.as_deref().map(str::parse::<Quant>).transpose()?;
        let seed = match (self.load_in_4bit, self.load_in_8bit) {
            (Some(true), Some(true)) => {
                return Err(
                    "model.load_in_4bit and model.load_in_8bit are both true; choose one".into(),
                )
            }
            (Some(true), _) => Some(Quant::Q4KM),
            (_, Some(true)) => Some(Quant::Q8_0),
            // Explicitly false: as stored (what transformers does).
            (Some(false), _) | (_, Some(false)) => Some(Quant::AsStored),
            (None, None) => None,
        };
        match (own, seed) {
            (Some(a), Some(b)) if a != b && !(b == Quant::AsStored) => Err(format!(
                "model.quant is {a} but load_in_4bit/load_in_8bit ask for {b}; keep one"
            )),
            (Some(a), _) => Ok(Some(a)),
            (None, b) => Ok(b),
        }
    }
}

/// The seed project's `model.device_map` as a placement mode: `auto`,
/// `cuda` (everything on the GPU), `cpu`, `balanced` (as much on the GPU as
/// fits, the rest in RAM, as accelerate does with one GPU).
fn device_map_mode(v: &yaml_serde::Value) -> Result<Mode, String> {
    let s = match v {
        yaml_serde::Value::String(s) => s.clone(),
        yaml_serde::Value::Mapping(_) => {
            return Err(
                "model.device_map as a per-module map is not supported; Spillway places \
                        layers itself (use auto, cuda, cpu or balanced, or offload.mode)"
                    .into(),
            )
        }
        other => format!("{other:?}"),
    };
    let t = s.trim().to_ascii_lowercase();
    match t.as_str() {
        "auto" => Ok(Mode::Auto),
        "cuda" | "gpu" | "cuda:0" | "0" => Ok(Mode::FullGpu),
        "cpu" => Ok(Mode::CpuOnly),
        "balanced" | "balanced_low_0" | "sequential" => Ok(Mode::CpuOffload),
        _ => Err(format!(
            "model.device_map '{s}' is not one of auto, cuda, cpu, balanced"
        )),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeneration {
    max_new_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffload {
    /// A mode name or a GPU-layer count.
    mode: Option<yaml_serde::Value>,
    folder: Option<PathBuf>,
    copy_disk_layers: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    #[serde(default, deserialize_with = "explicit")]
    threads: Option<Option<usize>>,
    cache_type_k: Option<crate::kernels::kv::CacheType>,
    cache_type_v: Option<crate::kernels::kv::CacheType>,
}

fn parse(text: &str, origin: &str) -> Result<RawConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    yaml_serde::from_str(text).map_err(|e| ConfigError::Invalid {
        origin: origin.to_string(),
        message: e.to_string().replace('\n', " "),
    })
}

/// The user's copy of the config: `config.yaml` in the platform config
/// folder (`~/.config/spillway` on Linux).
pub fn user_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "spillway").map(|d| d.config_dir().join("config.yaml"))
}

impl GenerationDefaults {
    /// These defaults with a model's `generation_config.json` over them
    /// (`temperature`, `top_p`, `top_k`, `repetition_penalty`,
    /// `max_new_tokens`; `do_sample: false` means greedy). Values out of
    /// range are ignored.
    pub fn with_model(&self, gen: &serde_json::Value) -> GenerationDefaults {
        let mut g = self.clone();
        let f = |k: &str| gen.get(k).and_then(serde_json::Value::as_f64);
        if let Some(t) = f("temperature").filter(|t| *t >= 0.0 && t.is_finite()) {
            g.temperature = t as f32;
        }
        if let Some(p) = f("top_p").filter(|p| (0.0..=1.0).contains(p)) {
            g.top_p = p as f32;
        }
        if let Some(k) = gen.get("top_k").and_then(serde_json::Value::as_u64) {
            g.top_k = k as usize;
        }
        if let Some(r) = f("repetition_penalty").filter(|r| *r > 0.0 && r.is_finite()) {
            g.repetition_penalty = r as f32;
        }
        if let Some(n) = gen
            .get("max_new_tokens")
            .and_then(serde_json::Value::as_u64)
        {
            g.max_new_tokens = n as usize;
        }
        if gen.get("do_sample").and_then(serde_json::Value::as_bool) == Some(false) {
            g.temperature = 0.0;
        }
        g
    }
}

impl Config {
    /// The embedded defaults.
    pub fn defaults() -> Result<Config, ConfigError> {
        Self::from_layers(&[(DEFAULTS_YAML, "defaults")])
    }

    /// The defaults overridden by the YAML file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_layers(&[
            (DEFAULTS_YAML, "defaults"),
            (&text, &path.display().to_string()),
        ])
    }

    /// Merges YAML documents, later ones winning, and validates the result.
    pub fn from_layers(layers: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut cfg = Config {
            model: None,
            mode: Mode::Auto,
            quant: Quant::AsStored,
            dtype: None,
            context_length: None,
            generation: GenerationDefaults {
                max_new_tokens: 512,
                temperature: 0.7,
                top_p: 0.95,
                top_k: 40,
                min_p: 0.05,
                repetition_penalty: 1.0,
                seed: 42,
            },
            offload_folder: PathBuf::from("offload"),
            copy_disk_layers: false,
            threads: None,
            kv_types: Default::default(),
        };
        for (text, origin) in layers {
            let raw = parse(text, origin)?;
            let bad = |message: String| ConfigError::Invalid {
                origin: origin.to_string(),
                message,
            };
            if let Some(v) = raw.model.context_length {
                cfg.context_length = v;
            }
            if let Some(v) = &raw.model.name {
                cfg.model = v.clone().filter(|n| !n.trim().is_empty());
            }
            if let Some(q) = raw.model.quant().map_err(bad)? {
                cfg.quant = q;
            }
            if let Some(d) = &raw.model.dtype {
                cfg.dtype = ComputeDType::parse(d).map_err(bad)?;
            }
            let own_mode = raw
                .offload
                .mode
                .as_ref()
                .map(|m| {
                    let text = match m {
                        yaml_serde::Value::String(s) => s.clone(),
                        yaml_serde::Value::Number(n) => n.to_string(),
                        other => format!("{other:?}"),
                    };
                    text.parse::<Mode>()
                        .map_err(|e| bad(format!("offload.mode: {e}")))
                })
                .transpose()?;
            let seed_mode = raw
                .model
                .device_map
                .as_ref()
                .map(device_map_mode)
                .transpose()
                .map_err(bad)?;
            match (own_mode, seed_mode) {
                (Some(a), Some(b)) if a != b => {
                    return Err(bad(format!(
                        "offload.mode is {a} but model.device_map means {b}; keep one"
                    )))
                }
                (Some(m), _) | (None, Some(m)) => cfg.mode = m,
                (None, None) => {}
            }
            let g = &mut cfg.generation;
            g.max_new_tokens = raw.generation.max_new_tokens.unwrap_or(g.max_new_tokens);
            g.temperature = raw.generation.temperature.unwrap_or(g.temperature);
            g.top_p = raw.generation.top_p.unwrap_or(g.top_p);
            g.top_k = raw.generation.top_k.unwrap_or(g.top_k);
            g.min_p = raw.generation.min_p.unwrap_or(g.min_p);
            g.repetition_penalty = raw
                .generation
                .repetition_penalty
                .unwrap_or(g.repetition_penalty);
            g.seed = raw.generation.seed.unwrap_or(g.seed);
            if let Some(f) = raw.offload.folder {
                cfg.offload_folder = f;
            }
            cfg.copy_disk_layers = raw.offload.copy_disk_layers.unwrap_or(cfg.copy_disk_layers);
            if let Some(t) = raw.runtime.threads {
                cfg.threads = t;
            }
            cfg.kv_types.k = raw.runtime.cache_type_k.unwrap_or(cfg.kv_types.k);
            cfg.kv_types.v = raw.runtime.cache_type_v.unwrap_or(cfg.kv_types.v);
            cfg.validate(origin)?;
        }
        Ok(cfg)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let g = &self.generation;
        if !(g.temperature >= 0.0 && g.temperature.is_finite()) {
            return Err(bad(format!(
                "generation.temperature {} must be >= 0",
                g.temperature
            )));
        }
        if !(0.0..=1.0).contains(&g.top_p) || !(0.0..=1.0).contains(&g.min_p) {
            return Err(bad("generation.top_p and min_p must lie within 0..1".into()));
        }
        if !(g.repetition_penalty > 0.0 && g.repetition_penalty.is_finite()) {
            return Err(bad("generation.repetition_penalty must be positive".into()));
        }
        if self.context_length == Some(0) || self.threads == Some(0) {
            return Err(bad(
                "model.context_length and runtime.threads must be positive".into(),
            ));
        }
        if self.offload_folder.as_os_str().is_empty() {
            return Err(bad("offload.folder is empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse() {
        let c = Config::defaults().unwrap();
        assert_eq!(c.generation.max_new_tokens, 512);
        assert_eq!(c.offload_folder, PathBuf::from("offload"));
        assert_eq!(c.context_length, None);
    }

    #[test]
    fn a_user_file_overrides_only_its_keys() {
        let c = Config::from_layers(&[
            (DEFAULTS_YAML, "defaults"),
            (
                "generation:\n  temperature: 0.2\nmodel:\n  context_length: 4096\n",
                "user",
            ),
        ])
        .unwrap();
        assert_eq!(c.generation.temperature, 0.2);
        assert_eq!(c.generation.top_k, 40);
        assert_eq!(c.context_length, Some(4096));
        let reset = Config::from_layers(&[
            ("model:\n  context_length: 4096\n", "a"),
            ("model:\n  context_length: null\n", "b"),
        ])
        .unwrap();
        assert_eq!(reset.context_length, None);
    }

    #[test]
    fn a_models_generation_config_sets_the_sampling_defaults() {
        let c = Config::defaults().unwrap();
        let g = c.generation.with_model(&serde_json::json!({
            "temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05,
            "do_sample": true, "max_new_tokens": 2048
        }));
        assert_eq!((g.temperature, g.top_p, g.top_k), (0.6, 0.9, 20));
        assert_eq!((g.repetition_penalty, g.max_new_tokens), (1.05, 2048));
        let greedy = c
            .generation
            .with_model(&serde_json::json!({"do_sample": false, "top_p": 7}));
        assert_eq!(
            (greedy.temperature, greedy.top_p),
            (0.0, c.generation.top_p)
        );
    }

    #[test]
    fn the_seed_projects_keys_are_mapped() {
        let c = Config::from_layers(&[
            (DEFAULTS_YAML, "defaults"),
            (
                "model:\n  name: mistralai/Mistral-7B-Instruct-v0.3\n  device_map: cuda\n  \
                 load_in_4bit: true\n  load_in_8bit: false\n  dtype: torch.bfloat16\n",
                "user",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.model.as_deref(),
            Some("mistralai/Mistral-7B-Instruct-v0.3")
        );
        assert_eq!(c.mode, Mode::FullGpu);
        assert_eq!(c.quant, Quant::Q4KM);
        assert_eq!(c.dtype, Some(ComputeDType::BF16));
        for (yaml, mode, quant, dtype) in [
            (
                "device_map: auto\n  load_in_8bit: true\n  dtype: float16",
                Mode::Auto,
                Quant::Q8_0,
                Some(ComputeDType::F16),
            ),
            (
                "device_map: cpu\n  dtype: auto",
                Mode::CpuOnly,
                Quant::AsStored,
                None,
            ),
            (
                "device_map: balanced\n  load_in_4bit: false\n  dtype: float32",
                Mode::CpuOffload,
                Quant::AsStored,
                Some(ComputeDType::F32),
            ),
        ] {
            let c = Config::from_layers(&[(&format!("model:\n  {yaml}\n"), "user")]).unwrap();
            assert_eq!((c.mode, c.quant, c.dtype), (mode, quant, dtype), "{yaml}");
        }
        // Spillway's own keys say the same things.
        let own = Config::from_layers(&[(
            "model:\n  quant: q8_0\noffload:\n  mode: disk-offload\n",
            "u",
        )])
        .unwrap();
        assert_eq!((own.mode, own.quant), (Mode::DiskOffload, Quant::Q8_0));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        for (text, needle) in [
            ("generation:\n  temprature: 0.2\n", "unknown field"),
            ("generation: [1, 2\n", "config user"),
            ("generation:\n  top_p: 3.0\n", "top_p"),
            ("runtime:\n  threads: 0\n", "threads"),
            ("generation:\n  temperature: hot\n", "config user"),
            (
                "model:\n  load_in_4bit: true\n  load_in_8bit: true\n",
                "choose one",
            ),
            ("model:\n  device_map: {lm_head: 0}\n", "per-module"),
            ("model:\n  device_map: tpu\n", "device_map"),
            ("model:\n  dtype: int3\n", "dtype"),
            (
                "model:\n  device_map: cpu\noffload:\n  mode: full-gpu\n",
                "keep one",
            ),
            ("model:\n  quant: q8_0\n  load_in_4bit: true\n", "keep one"),
        ] {
            let err = Config::from_layers(&[(DEFAULTS_YAML, "defaults"), (text, "user")])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains('\n'));
        }
    }
}
