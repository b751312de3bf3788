//! `spillway download`: a model from the Hugging Face Hub into the standard
//! Hugging Face cache, with a progress bar.

use std::process::ExitCode;

use clap::Args;

use crate::weights::download::{download, HubOptions, RepoRef};

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// A repository id, `owner/name` (also `owner/name@revision`).
    #[arg(value_name = "REPO")]
    repo: String,
    /// One file of the repository (a GGUF repo's quantization); default:
    /// what a model needs (configs, tokenizer, safetensors weights), or the
    /// repository's only GGUF.
    #[arg(value_name = "FILE")]
    file: Option<String>,
    /// A branch, tag or commit (default: main).
    #[arg(long, value_name = "REV")]
    revision: Option<String>,
    /// Print the local path as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: DownloadArgs) -> anyhow::Result<ExitCode> {
    let mut repo = RepoRef::parse(&a.repo)
        .ok_or_else(|| anyhow::anyhow!("'{}' is not a repository id (owner/name)", a.repo))?;
    if let Some(rev) = a.revision {
        repo.revision = rev;
    }
    if a.file.is_some() {
        repo.file = a.file;
    }
    let bar = super::progress_bar("download");
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let cancel = super::cancel_flag();
    let path = download(&repo, &HubOptions::default(), &mut |p| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
        bar.set_message(format!("{} ({}/{})", p.file, p.index + 1, p.files));
        !cancel.load(std::sync::atomic::Ordering::SeqCst)
    })?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::json!({ "path": path }));
    } else {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
