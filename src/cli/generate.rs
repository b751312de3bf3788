//! `spillway generate`: one reply, streamed to stdout, or one JSON object.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::chat::Message;
use crate::engine::GenerateParams;
use crate::model::sampler::SamplingParams;
use crate::telemetry;

use super::{cancel_flag, ModelArgs};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user's message.
    #[arg(long, value_name = "TEXT", conflicts_with = "chat")]
    prompt: Option<String>,
    /// A conversation: a JSON array of {"role", "content"} messages.
    #[arg(long, value_name = "FILE.json")]
    chat: Option<PathBuf>,
    /// A system prompt, placed before the conversation.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Send --prompt as plain text, without the chat template.
    #[arg(long, requires = "prompt")]
    raw: bool,
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_tokens: usize,
    /// Always take the most likely token.
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k", "min_p", "seed"])]
    greedy: bool,
    #[arg(long, value_name = "T", default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, value_name = "P", default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, value_name = "K", default_value_t = 40)]
    top_k: usize,
    #[arg(long, value_name = "P", default_value_t = 0.05)]
    min_p: f32,
    /// 1.0 turns it off.
    #[arg(long, value_name = "R", default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, value_name = "S", default_value_t = 42)]
    seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// Keep generating past the end-of-turn token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
}

impl GenerateArgs {
    fn sampling(&self) -> anyhow::Result<SamplingParams> {
        if self.greedy {
            return Ok(SamplingParams {
                repetition_penalty: self.repeat_penalty,
                ..SamplingParams::greedy()
            });
        }
        if !(self.temperature >= 0.0) || !(0.0..=1.0).contains(&self.top_p) || !(0.0..=1.0).contains(&self.min_p) {
            anyhow::bail!("--temperature must be >= 0, --top-p and --min-p within 0..1");
        }
        if !(self.repeat_penalty > 0.0) {
            anyhow::bail!("--repeat-penalty must be positive");
        }
        Ok(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            repetition_window: 64,
            seed: self.seed,
        })
    }

    fn messages(&self) -> anyhow::Result<Vec<Message>> {
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
        Ok(messages)
    }
}

pub fn run(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: a.sampling()?,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
    };
    // Validate inputs before the (slow) load.
    let messages = if a.raw { Vec::new() } else { a.messages()? };
    let mut engine = a.model.load()?;
    let prompt = if a.raw {
        engine.text_tokens(a.prompt.as_deref().unwrap_or_default())?
    } else {
        engine.chat_tokens(&messages, true)?
    };
    let load_peak = telemetry::rss().map(|r| r.peak);
    telemetry::reset_peak_rss();
    let cancel = cancel_flag();
    let mut stdout = std::io::stdout().lock();
    let json = a.json;
    let gen = engine.generate(&prompt, &params, &cancel, &mut |piece| {
        if !json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    let rss = telemetry::rss();
    if json {
        let store = engine.store();
        let max_layer = (0..store.n_layers()).map(|i| store.layer_bytes(i)).max().unwrap_or(0);
        let out = serde_json::json!({
            "prompt_tokens": gen.prompt_tokens,
            "generated_tokens": gen.generated_tokens,
            "text": gen.text,
            "finish_reason": gen.finish.as_str(),
            "prompt_tokens_per_sec": gen.prompt_tokens_per_sec(),
            "decode_tokens_per_sec": gen.decode_tokens_per_sec(),
            "peak_rss_bytes": rss.map(|r| r.peak.max(load_peak.unwrap_or(0))),
            "generation_peak_rss_bytes": rss.map(|r| r.peak),
            "memory": {
                "non_layer_bytes": engine.non_layer_bytes(),
                "max_layer_bytes": max_layer,
                "ram_layer_bytes": store.tier_bytes(crate::placement::Tier::Ram),
                "disk_layer_bytes": store.tier_bytes(crate::placement::Tier::Disk),
                "kv_cache_bytes": engine.kv_bytes(engine.cached_tokens().len()),
                "offload_folder_bytes": store.offload_bytes(),
            },
            "tiers": store.tiers().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        let _ = writeln!(stdout);
        eprintln!(
            "[{} prompt tokens at {:.1} t/s, {} generated at {:.1} t/s, stop: {}]",
            gen.prompt_tokens.len(),
            gen.prompt_tokens_per_sec(),
            gen.generated_tokens.len(),
            gen.decode_tokens_per_sec(),
            gen.finish.as_str()
        );
    }
    Ok(ExitCode::SUCCESS)
}
