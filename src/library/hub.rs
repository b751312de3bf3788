//! The Hub's model search, a repository's files with quantization and size,
//! and a file's exact footprint before it is downloaded: a GGUF's header and
//! tensor table read with range requests, a checkpoint's config.json.

use std::path::Path;

use serde_json::Value as Json;

use crate::placement::footprint::{Footprint, Quant};
use crate::weights::download::HubOptions;
use crate::weights::gguf::GgufFile;

/// A repository the search found.
#[derive(Debug, Clone, PartialEq)]
pub struct HubModel {
    pub id: String,
    pub downloads: u64,
    pub likes: u64,
    /// Holds GGUF files (else safetensors weights, quantized at load).
    pub gguf: bool,
}

/// What a repository offers: each GGUF file (mmproj and imatrix files
/// aside), or its checkpoint as one entry.
#[derive(Debug, Clone, PartialEq)]
pub struct HubFile {
    /// The GGUF's path in the repo; empty for a checkpoint.
    pub name: String,
    /// Bytes to download.
    pub bytes: u64,
    /// The quantization the name says (Q4_K_M…), or the scheme a checkpoint
    /// is quantized with at load.
    pub quant: String,
}

impl HubFile {
    pub fn is_checkpoint(&self) -> bool {
        self.name.is_empty()
    }

    /// What `load_model` takes.
    pub fn model_ref(&self, repo: &str) -> String {
        if self.is_checkpoint() {
            repo.to_string()
        } else {
            format!("{repo}:{}", self.name)
        }
    }
}

/// Larger answers than this are refused.
const MAX_JSON_BYTES: u64 = 32 << 20;
/// The longest GGUF header read before the footprint (vocabularies of 250k
/// tokens take ~6 MiB).
const MAX_HEADER_BYTES: u64 = 64 << 20;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(15))
        .timeout_read(std::time::Duration::from_secs(30))
        .build()
}

fn get(opts: &HubOptions, path: &str) -> Result<ureq::Request, String> {
    if opts.is_offline() {
        return Err("offline (HF_HUB_OFFLINE): the Hub is not searched".into());
    }
    let (endpoint, token) = opts.endpoint_and_token();
    let mut r = agent().get(&format!("{endpoint}{path}"));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    Ok(r)
}

fn json(r: ureq::Request, what: &str) -> Result<Json, String> {
    let resp = r.call().map_err(|e| match e {
        ureq::Error::Status(401 | 403, _) => {
            format!("{what}: the Hub refused (gated or private; set HF_TOKEN)")
        }
        ureq::Error::Status(404, _) => format!("{what}: not found on the Hub"),
        e => format!("{what}: the Hub could not be reached ({e})"),
    })?;
    let mut body = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(resp.into_reader(), MAX_JSON_BYTES),
        &mut body,
    )
    .map_err(|e| format!("{what}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("{what}: the Hub's answer is not JSON ({e})"))
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Text-generation repositories matching `query`, GGUF and safetensors,
/// most downloaded first.
pub fn search(opts: &HubOptions, query: &str, limit: usize) -> Result<Vec<HubModel>, String> {
    let query = query.trim();
    if query.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<HubModel> = Vec::new();
    for library in ["gguf", "safetensors"] {
        let path = format!(
            "/api/models?search={}&filter={library}&sort=downloads&direction=-1&limit={limit}",
            encode(query)
        );
        let v = json(get(opts, &path)?, "the search")?;
        for m in v.as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(id) = m
                .get("id")
                .or_else(|| m.get("modelId"))
                .and_then(Json::as_str)
            else {
                continue;
            };
            if out.iter().any(|o| o.id == id) {
                continue;
            }
            out.push(HubModel {
                id: id.to_string(),
                downloads: m.get("downloads").and_then(Json::as_u64).unwrap_or(0),
                likes: m.get("likes").and_then(Json::as_u64).unwrap_or(0),
                gguf: library == "gguf",
            });
        }
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.downloads));
    out.truncate(limit);
    Ok(out)
}

/// The quantization a GGUF's name says.
pub fn quant_of_name(name: &str) -> String {
    let stem = name.trim_end_matches(".gguf");
    let upper = stem.to_ascii_uppercase();
    const KNOWN: [&str; 24] = [
        "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S",
        "IQ3_M", "IQ4_XS", "IQ4_NL", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
        "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "BF16", "F16",
    ];
    const PLAIN: [&str; 6] = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "F32", "Q4_K"];
    KNOWN
        .iter()
        .chain(PLAIN.iter())
        .filter(|k| upper.contains(*k))
        .max_by_key(|k| k.len())
        .map_or_else(|| "?".to_string(), |k| k.to_string())
}

/// The files of `repo` worth offering, smallest first.
pub fn files(opts: &HubOptions, repo: &str, quant: Quant) -> Result<Vec<HubFile>, String> {
    let v = json(
        get(opts, &format!("/api/models/{repo}?blobs=true"))?,
        &format!("listing {repo}"),
    )?;
    let siblings = v
        .get("siblings")
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let size = |s: &Json| {
        s.get("size")
            .and_then(Json::as_u64)
            .or_else(|| {
                s.get("lfs")
                    .and_then(|l| l.get("size"))
                    .and_then(Json::as_u64)
            })
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    let mut checkpoint = 0u64;
    for s in siblings {
        let Some(name) = s.get("rfilename").and_then(Json::as_str) else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".gguf") {
            let base = lower.rsplit('/').next().unwrap_or(&lower);
            if base.starts_with("mmproj") || base.contains("imatrix") {
                continue;
            }
            out.push(HubFile {
                name: name.to_string(),
                bytes: size(s),
                quant: quant_of_name(name),
            });
        } else if lower.ends_with(".safetensors") && !name.contains('/') {
            checkpoint += size(s);
        }
    }
    if out.is_empty() && checkpoint > 0 {
        out.push(HubFile {
            name: String::new(),
            bytes: checkpoint,
            quant: quant.to_string(),
        });
    }
    out.sort_by_key(|f| f.bytes);
    Ok(out)
}

/// The exact footprint of `file` at `context` tokens (as a load without a
/// context setting would size it when `None`), before downloading it: a GGUF's header is read with range requests
/// (growing until the tensor table is in), a checkpoint's config.json is
/// read and planned as its conversion would be.
pub fn footprint(
    opts: &HubOptions,
    repo: &str,
    file: &HubFile,
    context: Option<usize>,
    prompt_chunk: usize,
) -> Result<Footprint, String> {
    let what = format!("{repo} {}", file.name);
    if file.is_checkpoint() {
        let config = json(
            get(opts, &format!("/{repo}/resolve/main/config.json"))?,
            &format!("{repo} config.json"),
        )?;
        let quant: Quant = file.quant.parse()?;
        let hp = crate::model::hparams::HParams::from_hf_config(&config)
            .map_err(|e| format!("{what}: {e}"))?;
        let ctx = hp
            .context_for(context)
            .map_err(|e| format!("{what}: {e}"))?;
        return Footprint::from_hf_config(repo.to_string(), &config, quant, ctx, prompt_chunk)
            .map_err(|e| format!("{what}: {e}"));
    }
    if file.bytes == 0 {
        return Err(format!("{what}: the Hub lists no size"));
    }
    let mut want = (4u64 << 20).min(file.bytes);
    loop {
        let path = format!("/{repo}/resolve/main/{}", file.name);
        let resp = get(opts, &path)?
            .set("Range", &format!("bytes=0-{}", want - 1))
            .call()
            .map_err(|e| format!("{what}: the header could not be read ({e})"))?;
        let mut prefix = Vec::with_capacity(want as usize);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(resp.into_reader(), want),
            &mut prefix,
        )
        .map_err(|e| format!("{what}: {e}"))?;
        match GgufFile::from_prefix(&prefix, file.bytes, Path::new(&file.name)) {
            Ok(g) => {
                let hp = crate::model::hparams::HParams::from_gguf(&g)
                    .map_err(|e| format!("{what}: {e}"))?;
                let ctx = hp
                    .context_for(context.map(|c| c.min(hp.context_length)))
                    .map_err(|e| format!("{what}: {e}"))?;
                return Ok(Footprint::from_gguf(&g, &hp, ctx, prompt_chunk));
            }
            // Too short a prefix reads as a truncated file: read more.
            Err(e) if (prefix.len() as u64) == want && want < file.bytes.min(MAX_HEADER_BYTES) => {
                let _ = e;
                want = (want * 4).min(file.bytes).min(MAX_HEADER_BYTES);
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizations_are_read_from_names() {
        assert_eq!(quant_of_name("Qwen3-8B-Q4_K_M.gguf"), "Q4_K_M");
        assert_eq!(quant_of_name("SmolLM2-135M-Instruct.Q4_1.gguf"), "Q4_1");
        assert_eq!(quant_of_name("x-IQ2_XXS.gguf"), "IQ2_XXS");
        assert_eq!(quant_of_name("gemma-3-270m-q4_k_m.gguf"), "Q4_K_M");
        assert_eq!(quant_of_name("model-bf16.gguf"), "BF16");
        assert_eq!(quant_of_name("model.gguf"), "?");
        assert_eq!(encode("qwen 3/8b"), "qwen%203%2F8b");
    }
}
