//! `spillway generate`: one reply, streamed to stdout, or one JSON object.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::chat::Message;
use crate::config::Config;
use crate::engine::vision::{image_sources, Prompt};
use crate::engine::GenerateParams;
use crate::model::sampler::SamplingParams;
use crate::telemetry;
use crate::vision::tasks::{self, Task};

use super::{cancel_flag, ModelArgs};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// The user's message.
    #[arg(long, value_name = "TEXT", conflicts_with = "chat")]
    pub(super) prompt: Option<String>,
    /// A conversation: a JSON array of {"role", "content"} messages.
    #[arg(long, value_name = "FILE.json")]
    chat: Option<PathBuf>,
    /// A system prompt, placed before the conversation.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Send --prompt as plain text, without the chat template.
    #[arg(long, requires = "prompt")]
    raw: bool,
    /// Sampling and length options default to the config's `generation`.
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Always take the most likely token.
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k", "min_p", "seed"])]
    greedy: bool,
    #[arg(long, value_name = "T")]
    temperature: Option<f32>,
    #[arg(long, value_name = "P")]
    top_p: Option<f32>,
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    #[arg(long, value_name = "P")]
    min_p: Option<f32>,
    /// 1.0 turns it off.
    #[arg(long, value_name = "R")]
    repeat_penalty: Option<f32>,
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// Keep generating past the end-of-turn token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    pub(super) json: bool,
    /// An image for the user's message (repeatable; vision-language models).
    #[arg(long, value_name = "PATH")]
    pub(super) image: Vec<PathBuf>,
    /// RoboBrain task (general, pointing, affordance, trajectory,
    /// grounding, progress): the prompt is worded as the loaded RoboBrain's
    /// own code words it (2.0's or 2.5's), and the answer's coordinates are
    /// parsed (2.5's trajectories with depth). `progress` (RoboBrain 2.5)
    /// estimates how far the task in --prompt has come in each of a
    /// sequence of frames (--image repeated, or --frames).
    #[arg(long, value_name = "TASK", default_value = "general", value_parser = parse_task)]
    pub(super) task: Task,
    /// `--task progress`: a folder of frames (PNG, JPEG, WebP; in name
    /// order), instead of --image repeated.
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub(super) frames: Option<PathBuf>,
    /// `--task progress`: at most this many frames are judged, evenly spread
    /// (the first and the last always among them).
    #[arg(long, value_name = "N", default_value_t = 12)]
    pub(super) max_frames: usize,
    /// `--task progress`: the image of the task done (default: the last
    /// frame).
    #[arg(long, value_name = "PATH")]
    pub(super) goal: Option<PathBuf>,
    /// `--task progress`: incremental (each frame against the one before,
    /// the steps accumulated) or forward (each frame against the first).
    #[arg(long, value_name = "MODE", default_value = "incremental")]
    pub(super) progress_mode: tasks::ProgressMode,
    /// Let a model that can think (Qwen3, RoboBrain 2.0 7B and 32B) think
    /// first.
    #[arg(long, conflicts_with = "no_think")]
    think: bool,
    /// Ask a thinking model to answer directly (the default).
    #[arg(long)]
    no_think: bool,
    /// Upper bound on an image's pixels after resizing: 784 pixels a token
    /// (default 1003520, 1280 tokens, as the window and the plan assume).
    #[arg(long, value_name = "N", default_value_t = crate::placement::footprint::DEFAULT_MAX_IMAGE_PIXELS)]
    pub(super) max_pixels: usize,
    /// Draw the answer's points, boxes or trajectory on the first image and
    /// save it here (PNG).
    #[arg(long, value_name = "OUT.png")]
    pub(super) annotate: Option<PathBuf>,
    /// The camera's intrinsics `fx,fy,cx,cy` (pixels of the image): with
    /// RoboBrain 2.5's depths, `--json` adds the trace as metric 3-D points.
    #[arg(long, value_name = "FX,FY,CX,CY", value_parser = tasks::Intrinsics::parse)]
    intrinsics: Option<tasks::Intrinsics>,
    /// Re-place the model every N generated tokens, in the middle of the
    /// reply (the KV cache and the tokens so far are kept), cycling through
    /// --replace-modes; JSON lists each move (for scripts/gpu-check.sh).
    #[arg(long, value_name = "N", requires = "replace_modes", hide = true)]
    replace_every: Option<usize>,
    /// Ask an OpenAI-compatible server (vLLM, SGLang, llama-server,
    /// `spillway serve`) instead of loading a model here: its base URL
    /// (e.g. http://127.0.0.1:8000/v1); --model then names the server's
    /// model.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The server's API key (default: the OPENAI_API_KEY environment
    /// variable).
    #[arg(
        long,
        value_name = "KEY",
        env = "OPENAI_API_KEY",
        hide_env_values = true,
        requires = "server"
    )]
    api_key: Option<String>,
    /// The placement modes --replace-every steps through, comma-separated.
    #[arg(long, value_name = "MODE,...", value_delimiter = ',', hide = true)]
    replace_modes: Vec<crate::placement::Mode>,
}

fn parse_task(s: &str) -> Result<Task, String> {
    s.parse()
}

impl GenerateArgs {
    /// A converted checkpoint's generation_config.json sets the defaults
    /// the flags did not.
    pub(super) fn with_model_defaults(
        &self,
        engine: &crate::engine::Engine,
        config: &Config,
        params: GenerateParams,
    ) -> anyhow::Result<GenerateParams> {
        Ok(match engine.generation_config() {
            Some(gen) => {
                let mut c = config.clone();
                c.generation = c.generation.with_model(gen);
                GenerateParams {
                    max_tokens: self.max_tokens.unwrap_or(c.generation.max_new_tokens),
                    sampling: self.sampling(&c)?,
                    ..params
                }
            }
            None => params,
        })
    }

    fn sampling(&self, config: &Config) -> anyhow::Result<SamplingParams> {
        let g = &config.generation;
        let repetition_penalty = self.repeat_penalty.unwrap_or(g.repetition_penalty);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            anyhow::bail!("--repeat-penalty must be positive");
        }
        if self.greedy {
            return Ok(SamplingParams {
                repetition_penalty,
                ..SamplingParams::greedy()
            });
        }
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(g.temperature),
            top_k: self.top_k.unwrap_or(g.top_k),
            top_p: self.top_p.unwrap_or(g.top_p),
            min_p: self.min_p.unwrap_or(g.min_p),
            repetition_penalty,
            repetition_window: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: self.seed.unwrap_or(g.seed),
        };
        let valid = p.temperature >= 0.0
            && p.temperature.is_finite()
            && (0.0..=1.0).contains(&p.top_p)
            && (0.0..=1.0).contains(&p.min_p);
        if !valid {
            anyhow::bail!("--temperature must be >= 0, --top-p and --min-p within 0..1");
        }
        Ok(p)
    }

    /// The conversation, its last user message worded for `--task` as
    /// `family`'s RoboBrain words it.
    fn messages(&self, family: tasks::Family) -> anyhow::Result<Vec<Message>> {
        let mut messages: Vec<Message> = match (&self.chat, &self.prompt) {
            (Some(path), _) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is not a JSON array of {{\"role\", \"content\"}} messages",
                        path.display()
                    )
                })?
            }
            (None, Some(p)) => vec![Message::new("user", p)],
            (None, None) => anyhow::bail!("give --prompt TEXT or --chat FILE.json"),
        };
        if messages.is_empty() {
            anyhow::bail!("the conversation has no messages");
        }
        if let Some(sys) = &self.system {
            messages.retain(|m| m.role != "system");
            messages.insert(0, Message::new("system", sys));
        }
        let last_user = messages
            .iter()
            .rposition(|m| m.role == "user")
            .context("the conversation has no user message")?;
        let m = &mut messages[last_user];
        // The task words the last user message; --image adds images before it.
        let text = self.task.prompt_for(family, &m.text());
        let mut parts: Vec<serde_json::Value> = match &m.content {
            serde_json::Value::Array(a) => a
                .iter()
                .filter(|p| p.get("type").and_then(|t| t.as_str()) != Some("text"))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        for img in &self.image {
            let abs = std::path::absolute(img).unwrap_or_else(|_| img.clone());
            parts.push(serde_json::json!({"type": "image", "path": abs}));
        }
        if parts.is_empty() {
            m.content = serde_json::Value::String(text);
        } else {
            parts.push(serde_json::json!({"type": "text", "text": text}));
            m.content = serde_json::Value::Array(parts);
        }
        Ok(messages)
    }
}

pub fn run(mut a: GenerateArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let params = GenerateParams {
        max_tokens: a.max_tokens.unwrap_or(config.generation.max_new_tokens),
        sampling: a.sampling(config)?,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        speculative: true,
    };
    if let Some(url) = a.server.clone() {
        return remote(&a, &url, &params);
    }
    if a.task == Task::Progress {
        return super::progress::run(a, config, params);
    }
    // Validate inputs before the (slow) load.
    let messages = if a.raw {
        Vec::new()
    } else {
        a.messages(tasks::Family::RoboBrain2)?
    };
    let load_start = std::time::Instant::now();
    // The plan budgets the vision tower for images as large as asked.
    a.model.max_image_pixels = Some(a.max_pixels);
    let mut engine = a.model.load(config)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    // RoboBrain 2.5 (Qwen3-VL) words its tasks and answers its own way.
    let family = match engine.vision() {
        Some(_) => tasks::Family::of_arch(engine.gguf.architecture().unwrap_or_default()),
        None => tasks::Family::RoboBrain2,
    };
    let messages = if a.raw || family == tasks::Family::RoboBrain2 {
        messages
    } else {
        a.messages(family)?
    };
    let params = a.with_model_defaults(&engine, config, params)?;
    let base = a
        .chat
        .as_ref()
        .and_then(|c| c.parent())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let sources = image_sources(&messages, &base).map_err(anyhow::Error::msg)?;
    let mut images = Vec::with_capacity(sources.len());
    for source in &sources {
        let rgb = source.load()?;
        images.push(engine.prepare_image(&rgb, Some(a.max_pixels))?);
    }
    a.task
        .check_images(images.len())
        .map_err(anyhow::Error::msg)?;
    let thinking = engine.supports_thinking();
    if a.think && thinking != Some(true) {
        eprintln!("note: this model does not think (Qwen3 and RoboBrain 2.0 7B and 32B do); --think ignored");
    }
    let suffix = engine.thinking_prompt(a.think);
    let prompt = if a.raw {
        Prompt::text(engine.text_tokens(a.prompt.as_deref().unwrap_or_default())?)
    } else {
        engine.chat_prompt(&messages, images, suffix)?
    };
    let load_peak = telemetry::rss().map(|r| r.peak);
    telemetry::reset_peak_rss();
    let cancel = cancel_flag();
    let mut stdout = std::io::stdout().lock();
    let json = a.json;
    if let Some(every) = a.replace_every {
        return replace_during_reply(&mut engine, &a, config, &prompt, &params, every, &cancel);
    }
    let gen = engine.generate_prompt(&prompt, &params, &cancel, &mut |piece| {
        if !json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    // Re-plans after an out-of-memory during the reply.
    super::report_notices(&mut engine);
    let rss = telemetry::rss();
    let split = tasks::split_thinking(&gen.text, suffix == "<think>");
    let shapes = tasks::parse_shapes_for(family, a.task, &split.answer);
    let first = prompt.images.first().map(|i| &i.prepared);
    let mapped = first.map(|p| shapes.to_image(p.resized, p.original));
    if let (Some(out), Some(path), Some(m)) = (&a.annotate, sources.first(), &mapped) {
        let img = path.load()?;
        crate::vision::annotate::save(&img, m, out)?;
        if !json {
            eprintln!("annotated image saved to {}", out.display());
        }
    } else if a.annotate.is_some() {
        anyhow::bail!("--annotate needs an image");
    }
    if json {
        let store = engine.store();
        let max_layer = (0..store.n_layers())
            .map(|i| store.layer_bytes(i))
            .max()
            .unwrap_or(0);
        let x = store.expert_stats().snapshot();
        let experts_json = serde_json::json!({ "hits": x.hits, "misses": x.misses, "bytes_read": x.bytes_read,
            "read_ahead": x.read_ahead, "read_ahead_used": x.read_ahead_used,
            "cache": engine.placement().experts.iter().map(|x| x.ram).collect::<Vec<_>>() });
        let out = serde_json::json!({
            "prompt_tokens": gen.prompt_tokens,
            "generated_tokens": gen.generated_tokens,
            "text": gen.text,
            "finish_reason": gen.finish.as_str(),
            "prompt_tokens_per_sec": gen.prompt_tokens_per_sec(),
            "decode_tokens_per_sec": gen.decode_tokens_per_sec(),
            "peak_rss_bytes": rss.map(|r| r.peak.max(load_peak.unwrap_or(0))),
            "generation_peak_rss_bytes": rss.map(|r| r.peak),
            // Loading (converting a Hugging Face folder included).
            "load_seconds": load_seconds,
            "load_peak_rss_bytes": load_peak,
            "memory": {
                "non_layer_bytes": engine.non_layer_bytes(),
                "max_layer_bytes": max_layer,
                "ram_layer_bytes": store.tier_bytes(crate::placement::Tier::Ram),
                "disk_layer_bytes": store.tier_bytes(crate::placement::Tier::Disk),
                "kv_cache_bytes": engine.kv_bytes(engine.cached_tokens().len()),
                "kv_types": engine.kv_types(),
                "offload_folder_bytes": store.offload_bytes(),
            },
            "tiers": store.tiers().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "kv_tiers": store.kv_tiers().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            // Experts of disk-tier mixture-of-experts layers: routed ones
            // found in the cache, read from disk, and the bytes read.
            "experts": experts_json,
            // Speculative decoding: tokens drafted and accepted, the
            // model's decode passes, and the drafter.
            "draft_proposed": gen.draft_proposed,
            "draft_accepted": gen.draft_accepted,
            "decode_passes": gen.passes,
            "draft_secs": gen.draft_secs,
            "decode_secs": gen.decode_secs,
            "speculative": engine.speculation().map(|s| serde_json::json!({
                "drafter": s.drafting.label(),
                "max_draft": s.max_draft,
                "draft_model": s.draft.as_ref().map(|d| serde_json::json!({
                    "file": d.name, "weight_bytes": d.weight_bytes,
                    "kv_cache_bytes": d.kv_bytes, "tier": d.tier.to_string(),
                })),
            })),
            "images": sources.iter().zip(&prompt.images).map(|(p, i)| serde_json::json!({
                "path": match p {
                    crate::engine::vision::ImageSource::File(f) => f.display().to_string(),
                    crate::engine::vision::ImageSource::Data(_) => "data: URL".to_string(),
                },
                "grid_thw": i.prepared.grid_thw,
                "resized": [i.prepared.resized.0, i.prepared.resized.1],
                "original": [i.prepared.original.0, i.prepared.original.1],
                "tokens": i.prepared.tokens(engine.vision().map_or(2, |v| v.processor.merge_size)),
            })).collect::<Vec<_>>(),
            "task": a.task.to_string(),
            "thinking": split.thinking,
            "answer": split.answer,
            // In the original image's pixels.
            // Depths in metres, one per trajectory point (RoboBrain 2.5);
            // camera-frame points with --intrinsics.
            "shapes": mapped.as_ref().map(|m| m.to_json(a.intrinsics.as_ref())),
        });
        println!("{out}");
    } else {
        let _ = writeln!(stdout);
        let drafted = match gen.draft_proposed {
            0 => String::new(),
            p => format!(
                ", {} of {p} drafted tokens accepted ({:.0}%)",
                gen.draft_accepted,
                100.0 * gen.draft_accepted as f64 / p as f64
            ),
        };
        eprintln!(
            "[{} prompt tokens at {:.1} t/s, {} generated at {:.1} t/s{drafted}, stop: {}]",
            gen.prompt_tokens.len(),
            gen.prompt_tokens_per_sec(),
            gen.generated_tokens.len(),
            gen.decode_tokens_per_sec(),
            gen.finish.as_str()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One reply generated in pieces of `every` tokens, the model re-placed
/// between pieces as `--replace-modes` says. Each piece continues from the
/// KV cache (the prompt plus the tokens so far is a prefix already
/// cached), so with greedy sampling the tokens must equal an unbroken run.
fn replace_during_reply(
    engine: &mut crate::engine::Engine,
    a: &GenerateArgs,
    config: &Config,
    prompt: &Prompt,
    params: &GenerateParams,
    every: usize,
    cancel: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<ExitCode> {
    if every == 0 {
        anyhow::bail!("--replace-every must be at least 1");
    }
    if !prompt.images.is_empty() {
        anyhow::bail!("--replace-every takes a text prompt");
    }
    let mut tokens = prompt.tokens.clone();
    let mut generated: Vec<u32> = Vec::new();
    let mut moves = Vec::new();
    let mut finish = "length";
    let start = std::time::Instant::now();
    while generated.len() < params.max_tokens {
        let piece = GenerateParams {
            max_tokens: every.min(params.max_tokens - generated.len()),
            ..params.clone()
        };
        let gen =
            engine.generate_prompt(&Prompt::text(tokens.clone()), &piece, cancel, &mut |_| {})?;
        generated.extend(&gen.generated_tokens);
        tokens.extend(&gen.generated_tokens);
        if gen.generated_tokens.len() < piece.max_tokens {
            finish = gen.finish.as_str();
            break;
        }
        if generated.len() >= params.max_tokens {
            break;
        }
        let mode = a.replace_modes[moves.len() % a.replace_modes.len()];
        let mut placement = a.model.placement.clone();
        placement.mode = Some(mode);
        placement.gpu_layers = None;
        placement.disk_layers = None;
        let request = placement.request(
            config,
            a.model
                .offload_dir
                .clone()
                .unwrap_or_else(|| config.offload_folder.clone()),
            false,
        );
        let t = std::time::Instant::now();
        engine
            .replace(request)
            .with_context(|| format!("cannot re-place the model as {mode}"))?;
        super::report_notices(engine);
        moves.push(serde_json::json!({
            "after_tokens": generated.len(),
            "mode": mode.to_string(),
            "moved_layers": engine.last_moved(),
            "seconds": t.elapsed().as_secs_f64(),
            "tiers": engine.store().tiers().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "kv_tiers": engine.store().kv_tiers().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        }));
    }
    let text = engine.tokenizer().decode(&generated, true)?;
    let out = serde_json::json!({
        "prompt_tokens": prompt.tokens,
        "generated_tokens": generated,
        "text": text,
        "finish_reason": finish,
        "seconds": start.elapsed().as_secs_f64(),
        "replacements": moves,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{text}");
        eprintln!("{}", serde_json::to_string_pretty(&out["replacements"])?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `generate --server`: the same reply from an OpenAI-compatible server,
/// streamed to stdout, or one JSON object with the fields that apply.
fn remote(a: &GenerateArgs, url: &str, params: &GenerateParams) -> anyhow::Result<ExitCode> {
    use crate::remote::{ChatRequest, Remote};
    if a.raw || a.annotate.is_some() || a.replace_every.is_some() || a.task == Task::Progress {
        anyhow::bail!(
            "--raw, --annotate, --replace-every and --task progress need a local model, not --server"
        );
    }
    if a.ignore_eos {
        anyhow::bail!("--ignore-eos is not part of the OpenAI API; it needs a local model");
    }
    let model = a.model.model.to_string_lossy().into_owned();
    // A server does not say its model's architecture; the name does.
    let family = tasks::Family::of_model_name(&model);
    let messages = a.messages(family)?;
    let server = Remote::new(url, a.api_key.clone());
    let stop = cancel_flag();
    let json = a.json;
    let mut out = std::io::stdout().lock();
    let think = (a.think || a.no_think).then_some(a.think);
    let req = ChatRequest {
        model: &model,
        messages: &messages,
        sampling: &params.sampling,
        max_tokens: Some(params.max_tokens),
        stop: &params.stop,
        think,
    };
    let mut printed = false;
    let result = server.chat(&req, &mut |d| {
        if !json && !d.content.is_empty() {
            let _ = write!(out, "{}", d.content);
            let _ = out.flush();
            printed = true;
        }
        !stop.load(std::sync::atomic::Ordering::SeqCst)
    });
    if printed {
        let _ = writeln!(out);
    }
    let reply = match result {
        Ok(r) => r,
        Err(f) => {
            let (e, partial) = (f.error, f.partial);
            if json && !partial.text.is_empty() {
                eprintln!("partial reply: {}", partial.text);
            }
            let advice = e.advice();
            anyhow::bail!("{e}{}{advice}", if advice.is_empty() { "" } else { ". " });
        }
    };
    if json {
        let v = serde_json::json!({
            "server": server.base_url,
            "model": model,
            "text": reply.text,
            "thinking": reply.reasoning,
            "finish_reason": reply.finish_reason,
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
            },
            "time_to_first_token_secs": reply.time_to_first_token_secs,
            "decode_tokens_per_sec": reply.decode_tokens_per_sec,
            "cancelled": reply.cancelled,
        });
        println!("{v}");
    }
    Ok(ExitCode::SUCCESS)
}
