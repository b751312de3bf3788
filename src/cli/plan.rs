//! `spillway plan`: the placement of a model and its predicted speed, from a
//! GGUF's tensor table or a Hugging Face config.json plus a quantization
//! scheme, without reading any weights. `--vram`, `--ram` and `--disk` plan
//! for a machine other than this one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::PlacementArgs;
use crate::config::Config;
use crate::engine::PROMPT_CHUNK;
use crate::model::hparams::HParams;
use crate::placement::budget::Held;
use crate::placement::planner::{human, TierBytes};
use crate::placement::{calibrate, Budgets, Footprint, Placement, Quant, Tier};
use crate::telemetry::machine::Machine;
use crate::weights::gguf::GgufFile;

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// A GGUF file, a config.json, or a folder holding either.
    #[arg(long, value_name = "PATH|CONFIG.json")]
    model: PathBuf,
    /// Quantization the weights of a config.json would get (q4_k_m, q8_0,
    /// f16, bf16, none); a GGUF is planned as stored.
    #[arg(long, value_name = "SCHEME")]
    quant: Option<Quant>,
    #[command(flatten)]
    placement: PlacementArgs,
    /// Context length in tokens (default: the config's, else the model's own).
    #[arg(long, value_name = "N")]
    ctx: Option<usize>,
    /// Offload folder whose free disk is the disk budget.
    #[arg(long, value_name = "DIR")]
    offload_dir: Option<PathBuf>,
    /// Free disk to plan with, e.g. 100GiB, as if the offload folder had it
    /// (with `--vram` and `--ram`: plan for another machine).
    #[arg(long, value_name = "SIZE", value_parser = crate::placement::planner::parse_bytes, conflicts_with = "offload_dir")]
    disk: Option<u64>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Also plan a speculative-decoding draft model (a GGUF) in what the
    /// model leaves free.
    #[arg(long, value_name = "PATH", conflicts_with = "draft_quant")]
    draft_model: Option<PathBuf>,
    /// Also plan a self-draft: the model (a GGUF) quantized to SCHEME.
    #[arg(long, value_name = "SCHEME")]
    draft_quant: Option<Quant>,
    #[command(flatten)]
    kv: super::KvArgs,
}

/// A draft model's plan: after the model, in what it leaves free (or why
/// it does not fit there).
struct DraftPlan {
    name: String,
    footprint: Footprint,
    placement: Result<Placement, String>,
}

/// The draft's footprint: a GGUF's, or for a self-draft, the model's GGUF
/// with each tensor in the type requantizing gives it.
fn draft_footprint(a: &PlanArgs, context: usize) -> anyhow::Result<Option<(String, Footprint)>> {
    let (path, quant) = match (&a.draft_model, a.draft_quant) {
        (Some(p), _) => (p.clone(), None),
        (None, Some(q)) => (a.model.clone(), Some(q)),
        (None, None) => return Ok(None),
    };
    let path = crate::engine::resolve_model_path(&path)?;
    let mut gguf = GgufFile::open(&path)
        .with_context(|| format!("cannot read the draft {}", path.display()))?;
    let hp = HParams::from_gguf(&gguf)?;
    let mut name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    if let Some(q) = quant {
        let planned = crate::weights::convert::requantized(&gguf, hp.n_layer, q);
        for (t, p) in gguf.tensors.iter_mut().zip(planned) {
            t.ggml_type = p.ggml_type;
            t.size_bytes = p.bytes()?;
        }
        name = format!("{name} self-draft {q}");
    }
    Ok(Some((
        name,
        Footprint::from_gguf(&gguf, &hp, context, PROMPT_CHUNK),
    )))
}

/// Plans the draft in the budgets left once `model` takes its peak bytes:
/// any mode but CPU-only lets it use the GPU.
fn plan_draft(
    a: &PlanArgs,
    model: &Footprint,
    budgets: &Budgets,
    placement: &Placement,
    request: &crate::engine::PlacementRequest,
    rates: &crate::placement::Rates,
) -> anyhow::Result<Option<DraftPlan>> {
    let Some((name, footprint)) = draft_footprint(a, model.context)? else {
        return Ok(None);
    };
    let mut left = budgets.clone();
    left.vram_bytes = left.vram_bytes.saturating_sub(placement.peak.gpu);
    left.ram_bytes = left.ram_bytes.saturating_sub(placement.peak.ram);
    let draft_request = crate::engine::PlacementRequest {
        mode: crate::engine::speculative::draft_mode(request.mode),
        ..Default::default()
    };
    let placement = crate::engine::plan_for(&footprint, &left, &draft_request, rates)
        .map_err(|e| e.to_string());
    Ok(Some(DraftPlan {
        name,
        footprint,
        placement,
    }))
}

/// A config.json to plan from: the path itself, or one in the folder when
/// the folder has no GGUF.
fn config_path(path: &Path) -> Option<PathBuf> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        return Some(path.to_path_buf());
    }
    if path.is_dir() {
        let has_gguf = !crate::weights::files_with_extension(path, "gguf")
            .ok()?
            .is_empty();
        let config = path.join("config.json");
        if !has_gguf && config.is_file() {
            return Some(config);
        }
    }
    None
}

fn footprint(a: &PlanArgs, config: &Config) -> anyhow::Result<(Footprint, String)> {
    let requested = a.ctx.or(config.context_length);
    // A repo id: only its config.json is fetched (planning comes before
    // downloading the weights).
    let model = match a
        .model
        .to_str()
        .and_then(crate::weights::download::RepoRef::parse)
    {
        Some(mut repo) if repo.file.is_none() => {
            repo.file = Some("config.json".into());
            crate::weights::download::download(&repo, &Default::default(), &mut |_| true)?
        }
        _ => a.model.clone(),
    };
    if let Some(path) = config_path(&model) {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let quant = a
            .quant
            .or((config.quant != Quant::AsStored).then_some(config.quant))
            .unwrap_or(Quant::Q4KM);
        let hp = HParams::from_hf_config(&json)?;
        let name = path.parent().and_then(|p| p.file_name()).map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let fp = Footprint::from_hf_config(
            name,
            &json,
            quant,
            hp.context_for(requested)?,
            PROMPT_CHUNK,
        )?;
        return Ok((fp, format!("config.json, {quant}")));
    }
    if a.quant.is_some_and(|q| q != Quant::AsStored) {
        anyhow::bail!("a GGUF is planned as stored; --quant applies to a config.json or a Hugging Face folder");
    }
    let path = crate::engine::local_model(&model, &Default::default(), &None, &mut |_| {})?;
    let path = crate::engine::resolve_model_path(&path)?;
    let gguf = GgufFile::open(&path)?;
    let hp = HParams::from_gguf(&gguf)?;
    let mut fp = Footprint::from_gguf(&gguf, &hp, hp.context_for(requested)?, PROMPT_CHUNK);
    // A llama.cpp vision model's tower is in its projector file beside it
    // (its weights as they load: 16-bit widened to f32).
    if hp.is_multimodal() && gguf.tensor("v.patch_embd.weight").is_none() {
        if let Some(mmproj) = crate::engine::vision::find_mmproj(&path) {
            let g = GgufFile::open(&mmproj)?;
            fp.vision_bytes = g
                .tensors
                .iter()
                .map(|t| {
                    let wide = matches!(
                        t.ggml_type,
                        crate::weights::GgmlType::F16 | crate::weights::GgmlType::BF16
                    );
                    t.size_bytes * if wide { 2 } else { 1 }
                })
                .sum();
            return Ok((fp, format!("GGUF, as stored, with {}", mmproj.display())));
        }
    }
    Ok((fp, "GGUF, as stored".into()))
}

pub fn run(a: PlanArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let (mut fp, source) = footprint(&a, config)?;
    let kv_types = a.kv.types(config);
    kv_types
        .check(fp.hp.head_dim)
        .map_err(|e| anyhow::anyhow!(e))?;
    fp.set_kv_types(kv_types);
    let offload_dir = a
        .offload_dir
        .clone()
        .unwrap_or_else(|| config.offload_folder.clone());
    let request = a.placement.request(config, offload_dir.clone(), true);
    let mut machine = Machine::new();
    let mut budgets = Budgets::probe(&mut machine, &request.budget, &offload_dir, Held::default());
    if let Some(disk) = a.disk {
        budgets.disk_bytes = disk;
    }
    let rates = calibrate::rates(&offload_dir, machine.gpus().first(), budgets.gpu_simulated);
    let placement = crate::engine::plan_for(&fp, &budgets, &request, &rates)?;
    let draft = plan_draft(&a, &fp, &budgets, &placement, &request, &rates)?;
    if a.json {
        let mut out = to_json(&fp, &budgets, &placement);
        if let Some(d) = &draft {
            out["draft"] = serde_json::json!({
                "model": d.name,
                "weights_bytes": d.footprint.weights_bytes(),
                "kv_cache_bytes": d.footprint.kv_cache_bytes(),
                "tiers": d.placement.as_ref().ok().map(Placement::tiers_json),
                "fits_without_disk": d.placement.as_ref().is_ok_and(|p| p.count(Tier::Disk) == 0),
                "error": d.placement.as_ref().err(),
            });
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&fp, &source, &budgets, &placement);
        if let Some(d) = &draft {
            println!();
            let sizes = format!(
                "{} · {} of weights + {} of KV cache",
                d.name,
                human(d.footprint.weights_bytes()),
                human(d.footprint.kv_cache_bytes())
            );
            match &d.placement {
                Ok(p) => {
                    println!(
                        "draft: {sizes} · {} GPU, {} RAM, {} disk layers",
                        p.count(Tier::Gpu),
                        p.count(Tier::Ram),
                        p.count(Tier::Disk)
                    );
                    if p.count(Tier::Disk) > 0 {
                        println!("note: the draft would need the disk beside this model; loading it is refused (choose a smaller draft or prompt lookup)");
                    }
                }
                Err(e) => println!("draft: {sizes} · does not fit beside the model: {e}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(fp: &Footprint, b: &Budgets, p: &Placement) -> serde_json::Value {
    serde_json::json!({
        "model": fp.name,
        "context": fp.context,
        "mode": p.mode.to_string(),
        "weights_bytes": fp.weights_bytes(),
        "kv_cache_bytes": fp.kv_cache_bytes(),
        "kv_types": { "k": fp.kv_types.k, "v": fp.kv_types.v },
        "tiers": p.tiers_json(),
        "layers": p.layers.iter().enumerate().map(|(i, t)| {
            let mut l = serde_json::json!({
                "index": i,
                "tier": t.to_string(),
                "bytes": fp.layer_bytes[i],
                "kv_tier": p.kv_tiers.get(i).map(|t| t.to_string()),
            });
            // A mixture-of-experts layer: its dense part's tier, and where
            // its experts are.
            if let Some(x) = p.experts.get(i) {
                let dense = if *t == Tier::Gpu { "gpu" } else { "ram" };
                l["dense"] = serde_json::json!({ "tier": dense, "bytes": fp.dense_bytes(i) });
                l["experts"] = serde_json::json!({
                    "ram": x.ram,
                    "disk": x.disk,
                    "bytes_each": fp.expert_bytes(i),
                });
            }
            l
        }).collect::<Vec<_>>(),
        "head": { "tier": p.head.to_string(), "bytes": fp.head_bytes },
        "embeddings": { "tier": "ram", "bytes": fp.embeddings_bytes },
        "vision": p.vision.map(|t| serde_json::json!({ "tier": t.to_string(), "bytes": fp.vision_bytes })),
        "budgets": {
            "vram_bytes": b.vram_bytes,
            "ram_bytes": b.ram_bytes,
            "disk_bytes": b.disk_bytes,
            "gpu": b.gpu_name,
            "gpu_simulated": b.gpu_simulated,
        },
        "predicted_prompt_tokens_per_sec": p.predicted_prompt_tokens_per_sec,
        "predicted_decode_tokens_per_sec": p.predicted_decode_tokens_per_sec,
        "notes": b.notes,
    })
}

fn print_text(fp: &Footprint, source: &str, b: &Budgets, p: &Placement) {
    println!(
        "{} ({source}) · {} of weights · context {} ({} of KV cache, {}) · mode {}",
        fp.name,
        human(fp.weights_bytes()),
        fp.context,
        human(fp.kv_cache_bytes()),
        fp.kv_types,
        p.mode
    );
    let gpu = match (&b.gpu_name, b.gpu_simulated) {
        (Some(_), true) => " (simulated)".to_string(),
        (Some(n), false) => format!(" ({n})"),
        (None, _) => String::new(),
    };
    println!(
        "budgets: VRAM {}{gpu} · RAM {} · disk {} free",
        human(b.vram_bytes),
        human(b.ram_bytes),
        human(b.disk_bytes)
    );
    println!();
    for (i, t) in p.layers.iter().enumerate() {
        match p.experts.get(i) {
            Some(x) => println!(
                "  layer {i:>3}  {t:<4}  {:>9}  dense {} in {}, experts {} in RAM, {} on disk ({} each)",
                human(fp.layer_bytes[i]),
                human(fp.dense_bytes(i)),
                if *t == Tier::Gpu { "VRAM" } else { "RAM" },
                x.ram,
                x.disk,
                human(fp.expert_bytes(i))
            ),
            None if *t == Tier::Gpu && p.kv_tiers.get(i) == Some(&Tier::Ram) => println!(
                "  layer {i:>3}  {t:<4}  {:>9}  KV cache in RAM (attention on the CPU)",
                human(fp.layer_bytes[i])
            ),
            None => println!("  layer {i:>3}  {t:<4}  {:>9}", human(fp.layer_bytes[i])),
        }
    }
    println!(
        "  head       {:<4}  {:>9}",
        p.head.to_string(),
        human(fp.head_bytes)
    );
    println!("  embeddings ram   {:>9}", human(fp.embeddings_bytes));
    if let Some(t) = p.vision {
        println!(
            "  vision     {:<4}  {:>9}",
            t.to_string(),
            human(fp.vision_bytes)
        );
    }
    println!();
    println!("  tier  layers    weights   KV cache       peak");
    let row = |name: &str, tier: Tier, t: &TierBytes| {
        println!(
            "  {name:<4}  {:>6}  {:>9}  {:>9}  {:>9}",
            p.count(tier),
            human(p.weights.get(tier)),
            human(p.kv.get(tier)),
            human(t.get(tier))
        );
    };
    row("gpu", Tier::Gpu, &p.peak);
    row("ram", Tier::Ram, &p.peak);
    row("disk", Tier::Disk, &p.peak);
    println!();
    println!(
        "predicted: prompt {:.1} tokens/s, decode {:.2} tokens/s",
        p.predicted_prompt_tokens_per_sec, p.predicted_decode_tokens_per_sec
    );
    for n in &b.notes {
        println!("note: {n}");
    }
}
