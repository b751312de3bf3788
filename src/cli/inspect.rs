//! `spillway inspect`: what a model file holds, without loading weights.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;

use crate::model::hparams::HParams;
use crate::weights::gguf::GgufFile;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A GGUF file.
    #[arg(long, value_name = "PATH")]
    model: std::path::PathBuf,
    /// List every tensor, not only the per-layer sums.
    #[arg(long)]
    tensors: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

pub fn run(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let g = GgufFile::open(&a.model)?;
    let hp = HParams::from_gguf(&g);
    let mut per_layer: BTreeMap<usize, u64> = BTreeMap::new();
    let mut other = 0u64;
    for t in &g.tensors {
        match layer_of(&t.name) {
            Some(l) => *per_layer.entry(l).or_default() += t.size_bytes,
            None => other += t.size_bytes,
        }
    }
    let total: u64 = g.tensors.iter().map(|t| t.size_bytes).sum();
    if a.json {
        let tensors: Vec<_> = g
            .tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "type": t.ggml_type.to_string(), "shape": t.shape, "bytes": t.size_bytes}))
            .collect();
        let hp_json = match &hp {
            Ok(h) => serde_json::json!({
                "architecture": h.arch.to_string(), "n_layer": h.n_layer, "n_embd": h.n_embd,
                "n_ff": h.n_ff, "n_head": h.n_head, "n_head_kv": h.n_head_kv,
                "head_dim": h.head_dim, "n_vocab": h.n_vocab, "context_length": h.context_length,
                "rope_freq_base": h.rope_freq_base, "rms_eps": h.rms_eps,
                "tied_embeddings": h.tied_embeddings}),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        println!(
            "{}",
            serde_json::json!({
                "path": g.path.display().to_string(), "gguf_version": g.version,
                "architecture": g.architecture(), "hparams": hp_json,
                "layer_bytes": per_layer.values().collect::<Vec<_>>(),
                "non_layer_bytes": other, "total_bytes": total, "tensors": tensors,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("file          {} (GGUF v{})", g.path.display(), g.version);
    println!("architecture  {}", g.architecture().unwrap_or("(none)"));
    match &hp {
        Ok(h) => {
            println!(
                "layers {}  embd {}  ff {}  heads {}/{} kv  head_dim {}  vocab {}  context {}",
                h.n_layer,
                h.n_embd,
                h.n_ff,
                h.n_head,
                h.n_head_kv,
                h.head_dim,
                h.n_vocab,
                h.context_length
            );
            println!(
                "rope base {}  rms eps {:e}  qkv bias {}  tied embeddings {}",
                h.rope_freq_base, h.rms_eps, h.has_qkv_bias, h.tied_embeddings
            );
        }
        Err(e) => println!("(not loadable: {e})"),
    }
    for key in [
        "general.name",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "general.file_type",
    ] {
        if let Some(v) = g.get(key) {
            println!("{key:<22}{}", v.summary());
        }
    }
    println!();
    if a.tensors {
        println!(
            "{:<40} {:>6} {:>22} {:>12}",
            "tensor", "type", "shape", "bytes"
        );
        for t in &g.tensors {
            println!(
                "{:<40} {:>6} {:>22} {:>12}",
                t.name,
                t.ggml_type.to_string(),
                format!("{:?}", t.shape),
                t.size_bytes
            );
        }
        println!();
    }
    let mut types: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in &g.tensors {
        let e = types.entry(t.ggml_type.to_string()).or_default();
        e.0 += 1;
        e.1 += t.size_bytes;
    }
    println!("{:<8} {:>8} {:>14}", "type", "tensors", "bytes");
    for (t, (n, b)) in &types {
        println!("{t:<8} {n:>8} {b:>14}");
    }
    println!();
    println!("{:<8} {:>14}", "layer", "bytes");
    for (l, b) in &per_layer {
        println!("{l:<8} {b:>14}");
    }
    println!("{:<8} {:>14}", "other", other);
    println!("{:<8} {:>14}", "total", total);
    Ok(ExitCode::SUCCESS)
}
