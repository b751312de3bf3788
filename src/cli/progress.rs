//! `spillway generate --task progress`: RoboBrain 2.5's progress estimation
//! over a sequence of frames, asked as Robo-Dopamine's inference asks it —
//! one question per frame after the first, eight images each (see
//! `vision::tasks::progress_steps`), incremental or forward. The questions
//! share their start (the template and the reference images; in forward
//! mode the "before" frame too), so the KV cache keeps it and each later
//! question computes only what differs.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::generate::GenerateArgs;
use crate::config::Config;
use crate::engine::vision::PromptImage;
use crate::engine::GenerateParams;
use crate::vision::{preprocess, tasks};

/// The frames to judge: `--frames DIR` (sampled to `--max-frames`) or the
/// `--image` list.
fn frames(a: &GenerateArgs) -> anyhow::Result<Vec<PathBuf>> {
    let all = match &a.frames {
        Some(dir) => crate::vision::list_frames(dir).map_err(anyhow::Error::msg)?,
        None => a.image.clone(),
    };
    let picked: Vec<PathBuf> = tasks::sample_frames(all.len(), a.max_frames)
        .into_iter()
        .map(|i| std::path::absolute(&all[i]).unwrap_or_else(|_| all[i].clone()))
        .collect();
    tasks::Task::Progress
        .check_images(picked.len())
        .map_err(|e| anyhow::anyhow!("{e} (give --image more than once, or --frames DIR)"))?;
    Ok(picked)
}

/// One judged frame.
struct Judged {
    frame: usize,
    answer: String,
    score: Option<f32>,
    prompt_tokens: usize,
    /// Of them, served from the KV cache (the prefix the questions share).
    reused_tokens: usize,
    seconds: f64,
}

pub fn run(
    mut a: GenerateArgs,
    config: &Config,
    params: GenerateParams,
) -> anyhow::Result<ExitCode> {
    let task = a
        .prompt
        .clone()
        .filter(|p| !p.trim().is_empty())
        .context("--task progress needs --prompt: the task the frames show")?;
    let frames = frames(&a)?;
    let goal = a
        .goal
        .as_ref()
        .map(|g| std::path::absolute(g).unwrap_or_else(|_| g.clone()));
    // Every image is read before the (slow) load: a bad frame stops here.
    let mut rgb = HashMap::new();
    for p in frames.iter().chain(&goal) {
        let img = preprocess::load(p).with_context(|| format!("frame {}", p.display()))?;
        rgb.insert(p.clone(), img);
    }
    let max_pixels = a.max_pixels.min(tasks::PROGRESS_MAX_PIXELS);
    a.model.max_image_pixels = Some(max_pixels);
    let load_start = std::time::Instant::now();
    let mut engine = a.model.load(config)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let family = match engine.vision() {
        Some(_) => tasks::Family::of_arch(engine.gguf.architecture().unwrap_or_default()),
        None => anyhow::bail!("--task progress needs a vision-language model (RoboBrain 2.5)"),
    };
    if family != tasks::Family::RoboBrain25 {
        eprintln!("note: progress estimation is RoboBrain 2.5's (Qwen3-VL); this model was not trained for it");
    }
    let mut params = a.with_model_defaults(&engine, config, params)?;
    // The answer is one line ending in </score>.
    params.stop.push("</score>".into());
    let mut prepared: HashMap<PathBuf, PromptImage> = HashMap::new();
    for (p, img) in &rgb {
        prepared.insert(p.clone(), engine.prepare_image(img, Some(max_pixels))?);
    }
    let cancel = super::cancel_flag();
    let suffix = engine.thinking_prompt(false);
    let start = std::time::Instant::now();
    let mut judged: Vec<Judged> = Vec::new();
    let mode = a.progress_mode;
    let steps = tasks::progress_steps(&frames, goal.as_deref(), mode);
    let mut err = std::io::stderr().lock();
    for step in &steps {
        let message = tasks::progress_message(&task, step);
        let images = step.images.iter().map(|p| prepared[p].clone()).collect();
        let prompt = engine.chat_prompt(std::slice::from_ref(&message), images, suffix)?;
        let t = std::time::Instant::now();
        let gen = engine.generate_prompt(&prompt, &params, &cancel, &mut |_| {})?;
        super::report_notices(&mut engine);
        let answer = tasks::split_thinking(&gen.text, false).answer;
        let answer = if gen.text.contains("<score>") && !answer.contains("</score>") {
            format!("{answer}</score>")
        } else {
            answer
        };
        let score = tasks::parse_score(&answer);
        if !a.json {
            let _ = writeln!(
                err,
                "frame {}/{} {}: {answer}",
                step.frame + 1,
                frames.len(),
                frames[step.frame].display()
            );
        }
        judged.push(Judged {
            frame: step.frame,
            answer,
            score,
            prompt_tokens: gen.prompt_tokens.len(),
            reused_tokens: gen.reused_tokens,
            seconds: t.elapsed().as_secs_f64(),
        });
        if gen.finish == crate::engine::FinishReason::Cancelled {
            anyhow::bail!("stopped");
        }
    }
    // Each frame's progress from the first frame's 0.
    let mut progress: Vec<Option<f32>> = vec![Some(0.0)];
    let mut at = 0.0;
    for j in &judged {
        at = mode.next(at, j.score);
        // Forward: a frame without a score has no progress of its own.
        progress
            .push((j.score.is_some() || mode == tasks::ProgressMode::Incremental).then_some(at));
    }
    if let Some(out) = &a.annotate {
        let imgs: Vec<preprocess::Rgb> = frames.iter().map(|p| rgb[p].clone()).collect();
        crate::vision::annotate::write_png(
            crate::vision::annotate::progress_strip(&imgs, &progress),
            out,
        )
        .with_context(|| format!("cannot write {}", out.display()))?;
        if !a.json {
            eprintln!("progress plot saved to {}", out.display());
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if a.json {
        let rows: Vec<serde_json::Value> = frames
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let j = judged.iter().find(|j| j.frame == i);
                serde_json::json!({
                    "frame": i,
                    "path": p.display().to_string(),
                    "progress": progress[i],
                    "answer": j.map(|j| j.answer.clone()),
                    "score": j.and_then(|j| j.score),
                    "prompt_tokens": j.map(|j| j.prompt_tokens),
                    "reused_tokens": j.map(|j| j.reused_tokens),
                    "seconds": j.map(|j| j.seconds),
                })
            })
            .collect();
        let out = serde_json::json!({
            "task": "progress",
            "instruction": task,
            "mode": mode.to_string(),
            "goal": goal.as_ref().map(|g| g.display().to_string()),
            "frames": rows,
            "load_seconds": load_seconds,
            "seconds": seconds,
            "tiers": engine.store().tiers().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        let mut stdout = std::io::stdout().lock();
        for (i, p) in progress.iter().enumerate() {
            let shown = p.map_or_else(|| "no score".to_string(), |v| format!("{:.0}%", v * 100.0));
            let _ = writeln!(stdout, "{}\t{shown}\t{}", i + 1, frames[i].display());
        }
        eprintln!("[{} frames judged in {seconds:.1} s]", judged.len());
    }
    Ok(ExitCode::SUCCESS)
}
