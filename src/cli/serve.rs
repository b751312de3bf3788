//! `spillway serve`: the loaded model behind an OpenAI-compatible HTTP API
//! until Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::config::Config;
use crate::engine::worker;
use crate::protocol::Event;
use crate::serve::{self, openai::Defaults, Dispatch, ServeOptions};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The address to listen on; anything but loopback exposes the model to
    /// the network (use --api-key).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: IpAddr,
    /// 0 picks a free port (printed on start).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    port: u16,
    /// Clients must send "Authorization: Bearer KEY" (default: the
    /// SPILLWAY_API_KEY environment variable, else no key).
    #[arg(
        long,
        value_name = "KEY",
        env = "SPILLWAY_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// Fetch images named by http(s) URLs (off: only inline data: URLs).
    #[arg(long)]
    allow_remote_images: bool,
    /// Requests waiting or running at once; more are refused with 503.
    #[arg(long, value_name = "N", default_value_t = serve::DEFAULT_QUEUE)]
    queue: usize,
    /// The largest request body in MiB (images come inline).
    #[arg(long, value_name = "MIB", default_value_t = serve::DEFAULT_MAX_BODY_BYTES >> 20)]
    max_body_mib: usize,
    /// Tokens generated within this many milliseconds are streamed as one
    /// delta (0: each token at once, one wake-up of server and client per
    /// token).
    #[arg(long, value_name = "MS", default_value_t = serve::DEFAULT_STREAM_INTERVAL_MS)]
    stream_interval_ms: u64,
    /// Write the address served, as JSON, to this file once listening (for
    /// scripts and tests that start the server on port 0).
    #[arg(long, value_name = "FILE", hide = true)]
    ready_file: Option<std::path::PathBuf>,
}

pub fn run(a: ServeArgs, config: &Config) -> anyhow::Result<ExitCode> {
    if a.queue == 0 {
        anyhow::bail!("--queue must be at least 1");
    }
    if a.max_body_mib == 0 {
        anyhow::bail!("--max-body-mib must be at least 1");
    }
    let api_key = a.api_key.clone().filter(|k| !k.is_empty());
    if !a.host.is_loopback() && api_key.is_none() {
        eprintln!(
            "warning: serving on {} without --api-key: anyone who can reach this address can use the model",
            a.host
        );
    }
    let mut engine = a.model.load(config)?;
    let mut c = config.clone();
    if let Some(gen) = engine.generation_config() {
        c.generation = c.generation.with_model(gen);
    }
    let g = &c.generation;
    let defaults = Defaults {
        temperature: g.temperature,
        top_k: g.top_k,
        top_p: g.top_p,
        min_p: g.min_p,
        repetition_penalty: g.repetition_penalty,
    };
    let info = worker::model_info(&mut engine, &a.model.model);
    let name = info.name.clone();
    // The worker's events are routed to their requests on the worker's own
    // thread, right after each is sent: no thread of ours wakes per token.
    let (link, ends) = worker::channel();
    let dispatch = Dispatch::new(link.submit.clone(), a.queue);
    let (router, events) = (dispatch.clone(), link.events.clone());
    let wake = Arc::new(move || {
        while let Ok(e) = events.try_recv() {
            if let Event::Notice(n) = &e {
                eprintln!("note: {n}");
            }
            router.route(&e);
        }
    });
    worker::spawn_loaded(engine, info, ends, wake).context("cannot start the engine thread")?;
    let running = serve::start(
        dispatch,
        ServeOptions {
            addr: SocketAddr::new(a.host, a.port),
            api_key,
            allow_remote_images: a.allow_remote_images,
            max_body_bytes: a.max_body_mib << 20,
            defaults,
            stream_interval: (a.stream_interval_ms > 0)
                .then(|| std::time::Duration::from_millis(a.stream_interval_ms)),
        },
    )
    .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
    let url = format!("http://{}/v1", running.addr);
    eprintln!("serving {name} at {url} (Ctrl-C stops)");
    if let Some(path) = &a.ready_file {
        let body =
            serde_json::json!({ "addr": running.addr.to_string(), "base_url": url, "model": name });
        crate::chat::history::write_atomic(path, body.to_string().as_bytes(), &mut || Ok(()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let stop = super::cancel_flag();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!("stopping");
    running.stop();
    link.send(crate::protocol::Command::Shutdown);
    Ok(ExitCode::SUCCESS)
}
