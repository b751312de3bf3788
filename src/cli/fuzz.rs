//! `spillway fuzz`: the file readers fuzzed in child processes (see
//! `crate::fuzz`). For developers and CI; docs/RELIABILITY.md says how.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::fuzz::{self, Target};

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// Targets to fuzz (repeatable; default: all).
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<Target>,
    /// The run's seed: the same seed and code give the same inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds per target.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Stop a target after this many inputs.
    #[arg(long, default_value_t = u64::MAX)]
    max_inputs: u64,
    /// Where inputs that crash are saved (under TARGET/).
    #[arg(long, value_name = "DIR", default_value = "fuzz-crashes")]
    crashes: PathBuf,
    /// Instead of fuzzing, run every saved input under DIR/TARGET/ (the
    /// regression corpus) and fail on any that crashes.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["targets", "child"])]
    replay: Option<PathBuf>,
    /// Print one JSON object per target.
    #[arg(long)]
    json: bool,
    /// Run as the child process of a fuzz run (internal).
    #[arg(long, hide = true, value_name = "TARGET")]
    child: Option<Target>,
}

pub fn run(a: FuzzArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = a.child {
        fuzz::child_main(t)?;
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe()?;
    if let Some(dir) = &a.replay {
        let results = fuzz::replay(&exe, dir)?;
        let mut failed = 0;
        for (path, crash) in &results {
            match crash {
                Some(c) => {
                    failed += 1;
                    println!("CRASH {}: {c}", path.display());
                }
                None => println!("ok    {}", path.display()),
            }
        }
        println!("{} inputs replayed, {failed} crashed", results.len());
        return Ok(if failed == 0 && !results.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let targets = if a.targets.is_empty() {
        Target::ALL.to_vec()
    } else {
        a.targets.clone()
    };
    let mut crashed = 0;
    for t in targets {
        let r = fuzz::fuzz(
            &exe,
            t,
            a.seed,
            Duration::from_secs_f64(a.seconds),
            a.max_inputs,
            Some(&a.crashes),
        )?;
        crashed += r.crashes.len();
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{:<12} {:>7} inputs in {:>5.1} s, {:>4} outcomes, corpus {:>3}, {} crashes",
                r.target,
                r.inputs,
                r.seconds,
                r.signatures,
                r.corpus,
                r.crashes.len()
            );
            for c in &r.crashes {
                let saved = c.saved.as_ref().map(|p| p.display().to_string());
                println!(
                    "  CRASH {} (saved as {})",
                    c.what,
                    saved.unwrap_or_default()
                );
            }
        }
    }
    Ok(if crashed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
