//! Configuration: the YAML defaults in `config/config.yaml` (embedded in the
//! binary) merged with a user's file, validated into a typed [`Config`].
//! Only `main`/CLI code sees the raw file; everything else gets `Config`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

const DEFAULTS_YAML: &str = include_str!("../config/config.yaml");

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

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub context_length: Option<usize>,
    pub generation: GenerationDefaults,
    pub offload_folder: PathBuf,
    pub copy_disk_layers: bool,
    pub threads: Option<usize>,
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
    folder: Option<PathBuf>,
    copy_disk_layers: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    #[serde(default, deserialize_with = "explicit")]
    threads: Option<Option<usize>>,
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
        };
        for (text, origin) in layers {
            let raw = parse(text, origin)?;
            let g = &mut cfg.generation;
            if let Some(v) = raw.model.context_length {
                cfg.context_length = v;
            }
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
    fn bad_files_are_clear_errors() {
        for (text, needle) in [
            ("generation:\n  temprature: 0.2\n", "unknown field"),
            ("generation: [1, 2\n", "config user"),
            ("generation:\n  top_p: 3.0\n", "top_p"),
            ("runtime:\n  threads: 0\n", "threads"),
            ("generation:\n  temperature: hot\n", "config user"),
        ] {
            let err = Config::from_layers(&[(DEFAULTS_YAML, "defaults"), (text, "user")])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains('\n'));
        }
    }
}
