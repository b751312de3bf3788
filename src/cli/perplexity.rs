//! `spillway perplexity`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::{cancel_flag, progress_bar, ModelArgs};
use crate::config::Config;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score.
    #[arg(long, value_name = "TEXT_FILE")]
    file: PathBuf,
    /// How many chunks to score (default: all whole chunks).
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PerplexityArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let ctx = a.model.ctx.unwrap_or(512);
    let mut model = a.model.clone();
    // The cache only ever holds one chunk.
    model.ctx = Some(ctx);
    let mut engine = model.load(config)?;
    let cancel = cancel_flag();
    let bar = progress_bar("perplexity");
    let started = std::time::Instant::now();
    let r = engine.perplexity(&text, ctx, a.chunks, &cancel, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let r = r?;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "ppl": r.ppl, "chunks": r.chunks, "ctx": r.ctx,
                "scored_tokens": r.scored_tokens, "per_chunk": r.per_chunk, "seconds": secs,
            })
        );
    } else {
        println!("ppl {:.4}", r.ppl);
        println!("chunks {}", r.chunks);
        println!(
            "ctx {} scored_tokens {} seconds {secs:.1}",
            r.ctx, r.scored_tokens
        );
    }
    Ok(ExitCode::SUCCESS)
}
