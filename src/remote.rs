//! Spillway as a client of an OpenAI-compatible server (vLLM, SGLang,
//! llama.cpp's llama-server, Ollama, another `spillway serve`): the model
//! list, and a chat reply streamed as server-sent events (parsed by the
//! `eventsource-stream` crate over ureq's body). Errors say what happened
//! and what to do; a stream cut mid-reply keeps what came.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::chat::Message;
use crate::model::sampler::SamplingParams;
use crate::vision::preprocess;

/// Where the server is.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    /// How long to wait for the server to answer at all (connect, first
    /// byte, each read).
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RemoteError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the server refused the API key ({message})")]
    Unauthorized { message: String },
    #[error("the server has no model {model:?} ({message})")]
    UnknownModel { model: String, message: String },
    #[error("the server refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the server failed ({status}): {message}")]
    Server { status: u16, message: String },
    #[error("the server did not answer within {secs} s")]
    Timeout { secs: u64 },
    #[error("the reply was cut off: {reason}")]
    Cut { reason: String },
    #[error("the server's answer is not the OpenAI API's: {reason}")]
    BadAnswer { reason: String },
    #[error("{0}")]
    Input(String),
}

impl RemoteError {
    /// What the user can do about it.
    pub fn advice(&self) -> &'static str {
        match self {
            RemoteError::Unreachable { .. } => {
                "Check the server's address and that it is running (e.g. `vllm serve MODEL` listens on port 8000; the base URL ends in /v1)."
            }
            RemoteError::Unauthorized { .. } => "Check the API key (Settings → Engine, or --api-key).",
            RemoteError::UnknownModel { .. } => {
                "Pick one of the server's models (GET /v1/models lists them)."
            }
            RemoteError::Refused { .. } => "Shorten the conversation or change the sampling settings.",
            RemoteError::Server { .. } => "The server reported a failure; see its log, then try again.",
            RemoteError::Timeout { .. } => "The server may be busy or loading; try again, or raise the timeout.",
            RemoteError::Cut { .. } => "What arrived is kept; regenerate to try again.",
            RemoteError::BadAnswer { .. } => "Is the base URL an OpenAI-compatible server (ending in /v1)?",
            RemoteError::Input(_) => "",
        }
    }
}

/// A reply as it arrives: reasoning (a thinking model) and content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub reasoning: String,
    pub content: String,
}

/// A finished (or cut) reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    pub text: String,
    pub reasoning: String,
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub time_to_first_token_secs: f64,
    /// Streamed pieces after the first over the time after the first.
    pub decode_tokens_per_sec: f64,
    /// Stopped by the caller.
    pub cancelled: bool,
}

/// A reply that failed: why, and what arrived before.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub error: RemoteError,
    pub partial: Reply,
}

/// What to send: the conversation and the sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: &'a [Message],
    pub sampling: &'a SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: &'a [String],
    pub think: Option<bool>,
}

impl Remote {
    pub fn new(base_url: &str, api_key: Option<String>) -> Self {
        Remote {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            timeout: Duration::from_secs(120),
        }
    }

    fn agent(&self) -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10).min(self.timeout))
            .timeout_read(self.timeout)
            .build()
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self
            .agent()
            .request(method, &format!("{}{path}", self.base_url));
        match &self.api_key {
            Some(k) => r.set("Authorization", &format!("Bearer {k}")),
            None => r,
        }
    }

    /// The ids of the server's models (`GET /models`).
    pub fn models(&self) -> Result<Vec<String>, RemoteError> {
        Ok(self
            .models_with_context()?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The server's models with their context length where it says
    /// (vLLM's `max_model_len`, llama-server's `meta.n_ctx_train`; 0 when
    /// unknown).
    pub fn models_with_context(&self) -> Result<Vec<(String, usize)>, RemoteError> {
        let resp = self
            .request("GET", "/models")
            .call()
            .map_err(|e| self.http_error(e, ""))?;
        let v: Value = read_json(resp)?;
        let data = v["data"].as_array().ok_or_else(|| RemoteError::BadAnswer {
            reason: "no \"data\" list of models".into(),
        })?;
        Ok(data
            .iter()
            .filter_map(|m| {
                let id = m["id"].as_str()?.to_string();
                let ctx = m["max_model_len"]
                    .as_u64()
                    .or(m["meta"]["n_ctx_train"].as_u64())
                    .unwrap_or(0);
                Some((id, ctx as usize))
            })
            .collect())
    }

    /// Streams a reply: `on_delta` receives each piece and returns false to
    /// stop (the stream is closed, which stops the server's generation).
    pub fn chat(
        &self,
        req: &ChatRequest,
        on_delta: &mut dyn FnMut(&Delta) -> bool,
    ) -> Result<Reply, Box<Failed>> {
        let failed = |error, partial| Box::new(Failed { error, partial });
        let body = request_body(req).map_err(|e| failed(e, Reply::default()))?;
        let started = Instant::now();
        let resp = self
            .request("POST", "/chat/completions")
            .set("Accept", "text/event-stream")
            .send_json(body)
            .map_err(|e| failed(self.http_error(e, req.model), Reply::default()))?;
        let mut reply = Reply::default();
        let outcome = read_stream(resp.into_reader(), started, &mut reply, on_delta);
        match outcome {
            Ok(()) => Ok(reply),
            Err(e) => Err(failed(e, reply)),
        }
    }

    fn http_error(&self, e: ureq::Error, model: &str) -> RemoteError {
        match e {
            ureq::Error::Status(status, resp) => {
                let text = resp.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v["error"]["message"]
                            .as_str()
                            .or(v["error"].as_str())
                            .or(v["detail"].as_str())
                            .or(v["message"].as_str())
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| text.chars().take(300).collect());
                match status {
                    401 | 403 => RemoteError::Unauthorized { message },
                    404 if !model.is_empty() => RemoteError::UnknownModel {
                        model: model.to_string(),
                        message,
                    },
                    400..=499 => RemoteError::Refused { status, message },
                    _ => RemoteError::Server { status, message },
                }
            }
            ureq::Error::Transport(t) => {
                let reason = t.to_string();
                if reason.contains("timed out") || reason.contains("Timeout") {
                    RemoteError::Timeout {
                        secs: self.timeout.as_secs(),
                    }
                } else {
                    RemoteError::Unreachable {
                        url: self.base_url.clone(),
                        reason,
                    }
                }
            }
        }
    }
}

fn read_json(resp: ureq::Response) -> Result<Value, RemoteError> {
    let mut text = String::new();
    resp.into_reader()
        .take(16 << 20)
        .read_to_string(&mut text)
        .map_err(|e| RemoteError::Cut {
            reason: e.to_string(),
        })?;
    serde_json::from_str(&text).map_err(|e| RemoteError::BadAnswer {
        reason: e.to_string(),
    })
}

/// A message's image parts (local paths, as the window and `--image`
/// give them) inline as `data:` URLs; text parts as they are.
fn wire_content(m: &Message) -> Result<Value, RemoteError> {
    let Some(parts) = m.content.as_array() else {
        return Ok(m.content.clone());
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let ty = p["type"].as_str().unwrap_or_default();
        if ty == "text" {
            out.push(json!({ "type": "text", "text": p["text"] }));
            continue;
        }
        let src = crate::engine::vision::image_part_location(p)
            .unwrap_or_else(|| Err("an image part has no path".into()))
            .map_err(RemoteError::Input)?;
        let url = if src.starts_with("data:") || src.starts_with("http") {
            src
        } else {
            let path = Path::new(src.strip_prefix("file://").unwrap_or(&src));
            let bytes =
                preprocess::read_file(path).map_err(|e| RemoteError::Input(e.to_string()))?;
            // Checked here, so a bad file is the user's error, not the server's.
            preprocess::decode(&bytes, &path.display().to_string())
                .map_err(|e| RemoteError::Input(e.to_string()))?;
            let mime = image::guess_format(&bytes)
                .map(|f| f.to_mime_type())
                .unwrap_or("image/png");
            format!(
                "data:{mime};base64,{}",
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            )
        };
        out.push(json!({ "type": "image_url", "image_url": { "url": url } }));
    }
    Ok(Value::Array(out))
}

/// The JSON body: OpenAI's fields, plus the sampling extensions vLLM,
/// SGLang and llama-server take (`top_k`, `min_p`, `repetition_penalty`)
/// only when they change something.
fn request_body(req: &ChatRequest) -> Result<Value, RemoteError> {
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        messages.push(json!({ "role": m.role, "content": wire_content(m)? }));
    }
    let s = req.sampling;
    let mut body = json!({
        "model": req.model,
        "messages": messages,
        "stream": true,
        "stream_options": { "include_usage": true },
        "temperature": s.temperature,
        "seed": s.seed,
    });
    if !s.is_greedy() {
        body["top_p"] = json!(s.top_p);
        if s.top_k > 0 {
            body["top_k"] = json!(s.top_k);
        }
        if s.min_p > 0.0 {
            body["min_p"] = json!(s.min_p);
        }
    }
    if s.repetition_penalty != 1.0 {
        body["repetition_penalty"] = json!(s.repetition_penalty);
    }
    if s.frequency_penalty != 0.0 {
        body["frequency_penalty"] = json!(s.frequency_penalty);
    }
    if s.presence_penalty != 0.0 {
        body["presence_penalty"] = json!(s.presence_penalty);
    }
    if let Some(n) = req.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if !req.stop.is_empty() {
        body["stop"] = json!(req.stop);
    }
    if let Some(t) = req.think {
        body["chat_template_kwargs"] = json!({ "enable_thinking": t });
    }
    Ok(body)
}

/// Reads the event stream into `reply` until `[DONE]`.
fn read_stream(
    body: impl Read + Send,
    started: Instant,
    reply: &mut Reply,
    on_delta: &mut dyn FnMut(&Delta) -> bool,
) -> Result<(), RemoteError> {
    // The body's chunks as a stream of bytes for the parser; read here, on
    // this thread, as the parser asks for them.
    let mut body = body;
    let chunks = futures_util::stream::iter(std::iter::from_fn(move || {
        let mut buf = vec![0u8; 16 << 10];
        match body.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(Ok::<_, std::io::Error>(buf))
            }
            Err(e) => Some(Err(e)),
        }
    }));
    let mut events = eventsource_stream::Eventsource::eventsource(chunks);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| RemoteError::Input(e.to_string()))?;
    let mut first: Option<Instant> = None;
    let mut last = started;
    let mut pieces = 0u64;
    let outcome = runtime.block_on(async {
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| RemoteError::Cut {
                reason: e.to_string(),
            })?;
            if ev.data.trim() == "[DONE]" {
                return Ok(());
            }
            let v: Value = serde_json::from_str(&ev.data).map_err(|e| RemoteError::BadAnswer {
                reason: format!("an event is not JSON: {e}"),
            })?;
            if let Some(err) = v.get("error") {
                let message = err["message"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .to_string();
                return Err(RemoteError::Server {
                    status: err["code"].as_u64().unwrap_or(500) as u16,
                    message,
                });
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                reply.prompt_tokens = u["prompt_tokens"].as_u64();
                reply.completion_tokens = u["completion_tokens"].as_u64();
            }
            let Some(choice) = v["choices"].get(0) else {
                continue;
            };
            let d = &choice["delta"];
            let delta = Delta {
                reasoning: d["reasoning_content"]
                    .as_str()
                    .or(d["reasoning"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                content: d["content"].as_str().unwrap_or_default().to_string(),
            };
            if let Some(f) = choice["finish_reason"].as_str() {
                reply.finish_reason = Some(f.to_string());
            }
            if delta.reasoning.is_empty() && delta.content.is_empty() {
                continue;
            }
            let now = Instant::now();
            if first.is_none() {
                first = Some(now);
                reply.time_to_first_token_secs = (now - started).as_secs_f64();
            }
            last = now;
            pieces += 1;
            reply.text.push_str(&delta.content);
            reply.reasoning.push_str(&delta.reasoning);
            if !on_delta(&delta) {
                reply.cancelled = true;
                return Ok(());
            }
        }
        Err(RemoteError::Cut {
            reason: "the stream ended before [DONE]".into(),
        })
    });
    if let Some(f) = first {
        let n = reply.completion_tokens.unwrap_or(pieces).saturating_sub(1);
        let secs = (last - f).as_secs_f64();
        if secs > 0.0 {
            reply.decode_tokens_per_sec = n as f64 / secs;
        }
    }
    outcome
}

/// The window's engine when it chats through a server: a thread speaking
/// the worker's protocol (`Command` in, `Event` out), so the chat, stop,
/// regenerate, edit, images and history work unchanged. "Loading" checks
/// the server and its model; a reply streams as `Token` events (a thinking
/// model's reasoning inside `<think>…</think>`, which the chat folds);
/// placement commands are answered with a note, as there are no layers
/// here to place.
pub fn spawn_worker(
    remote: Remote,
    wake: std::sync::Arc<dyn Fn() + Send + Sync>,
) -> crate::engine::worker::EngineLink {
    let (link, ends) = crate::engine::worker::channel();
    let spawned = std::thread::Builder::new()
        .name("spillway-remote".into())
        .spawn(move || remote_loop(remote, ends, wake));
    if let Err(e) = spawned {
        eprintln!("cannot start the remote engine thread: {e}");
    }
    link
}

fn remote_error(e: &RemoteError) -> crate::protocol::ErrorInfo {
    use crate::protocol::{ErrorInfo, ErrorKind};
    let advice = e.advice();
    let kind = match e {
        RemoteError::Input(_) => ErrorKind::Invalid,
        _ => ErrorKind::Remote,
    };
    ErrorInfo::new(
        kind,
        if advice.is_empty() {
            e.to_string()
        } else {
            format!("{e}. {advice}")
        },
    )
}

/// What the window shows for a model on a server.
pub fn remote_model_info(
    remote: &Remote,
    model: &str,
    context_length: usize,
) -> crate::protocol::ModelInfo {
    use crate::placement::planner::TierBytes;
    crate::protocol::ModelInfo {
        name: model.to_string(),
        path: std::path::PathBuf::from(&remote.base_url),
        n_layers: 0,
        context_length,
        layer_bytes: Vec::new(),
        placement: crate::placement::Placement {
            mode: crate::placement::Mode::Auto,
            layers: Vec::new(),
            head: crate::placement::Tier::Ram,
            vision: None,
            weights: TierBytes::default(),
            kv: TierBytes::default(),
            kv_tiers: Vec::new(),
            peak: TierBytes::default(),
            predicted_prompt_tokens_per_sec: 0.0,
            predicted_decode_tokens_per_sec: 0.0,
            experts: Vec::new(),
        },
        budget_notes: Vec::new(),
        gpu_name: None,
        speculation: None,
        kv_types: Default::default(),
        vision: None,
        thinking: None,
        synthetic: false,
        remote: Some(remote.base_url.clone()),
    }
}

fn remote_loop(
    remote: Remote,
    ends: crate::engine::worker::WorkerEnds,
    wake: std::sync::Arc<dyn Fn() + Send + Sync>,
) {
    use crate::protocol::{Command, ErrorInfo, ErrorKind, Event, Finish, ReplyStats};
    let send = |e: Event| {
        let _ = ends.events.send(e);
        wake();
    };
    let mut model: Option<String> = None;
    while let Ok(cmd) = ends.commands.recv() {
        match cmd {
            Command::Load(req) => {
                send(Event::LoadProgress(crate::protocol::LoadProgress::Reading));
                let name = req.model_path.to_string_lossy().into_owned();
                let listed = remote.models_with_context();
                ends.stopped.clear(req.req_id);
                match listed {
                    Ok(models) => match models.iter().find(|(id, _)| *id == name) {
                        Some((_, ctx)) => {
                            model = Some(name.clone());
                            send(Event::Loaded(remote_model_info(&remote, &name, *ctx)));
                        }
                        None => send(Event::LoadFailed(ErrorInfo::new(
                            ErrorKind::Remote,
                            format!(
                                "the server at {} has no model {name:?}; it has {}. Pick one in Settings → Engine.",
                                remote.base_url,
                                models.iter().map(|m| m.0.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        ))),
                    },
                    Err(e) => send(Event::LoadFailed(remote_error(&e))),
                }
            }
            Command::Unload => {
                model = None;
                send(Event::Unloaded);
            }
            Command::Generate(req) => {
                let id = req.req_id;
                let Some(name) = model.clone() else {
                    send(Event::ReplyFailed {
                        req_id: id,
                        error: ErrorInfo::new(ErrorKind::NoModel, "no server model is chosen"),
                    });
                    send(Event::Finished {
                        req_id: id,
                        finish: Finish::Failed,
                        stats: ReplyStats::default(),
                    });
                    continue;
                };
                let chat = ChatRequest {
                    model: &name,
                    messages: &req.messages,
                    sampling: &req.sampling,
                    max_tokens: Some(req.max_tokens),
                    stop: &req.stop,
                    think: req.think.then_some(true),
                };
                let mut in_thinking = false;
                let result = remote.chat(&chat, &mut |d| {
                    let mut text = String::new();
                    if !d.reasoning.is_empty() {
                        if !in_thinking {
                            text.push_str("<think>");
                            in_thinking = true;
                        }
                        text.push_str(&d.reasoning);
                    }
                    if !d.content.is_empty() {
                        if in_thinking {
                            text.push_str("</think>");
                            in_thinking = false;
                        }
                        text.push_str(&d.content);
                    }
                    send(Event::Token { req_id: id, text });
                    !ends.stopped.is_stopped(id)
                });
                if in_thinking {
                    send(Event::Token {
                        req_id: id,
                        text: "</think>".into(),
                    });
                }
                let stats = |r: &Reply| ReplyStats {
                    time_to_first_token_secs: r.time_to_first_token_secs,
                    prompt_tokens: r.prompt_tokens.unwrap_or(0) as usize,
                    reused_tokens: 0,
                    generated_tokens: r.completion_tokens.unwrap_or(0) as usize,
                    decode_tokens_per_sec: r.decode_tokens_per_sec,
                    ..ReplyStats::default()
                };
                match result {
                    Ok(r) => {
                        let finish = if r.cancelled {
                            Finish::Cancelled
                        } else if r.finish_reason.as_deref() == Some("length") {
                            Finish::Length
                        } else {
                            Finish::EndOfTurn
                        };
                        let snapshot = crate::telemetry::Snapshot {
                            prompt_tokens_per_sec: 0.0,
                            decode_tokens_per_sec: r.decode_tokens_per_sec,
                            ..Default::default()
                        };
                        send(Event::Telemetry(Box::new(snapshot)));
                        send(Event::Finished {
                            req_id: id,
                            finish,
                            stats: stats(&r),
                        });
                    }
                    Err(f) => {
                        let (e, partial) = (f.error, f.partial);
                        send(Event::ReplyFailed {
                            req_id: id,
                            error: remote_error(&e),
                        });
                        // What arrived is kept: the reply ends as cut, not failed.
                        let finish = if partial.text.is_empty() && partial.reasoning.is_empty() {
                            Finish::Failed
                        } else {
                            Finish::Cancelled
                        };
                        send(Event::Finished {
                            req_id: id,
                            finish,
                            stats: stats(&partial),
                        });
                    }
                }
                ends.stopped.clear(id);
            }
            Command::Preview(_) => send(Event::Preview(Err(ErrorInfo::new(
                ErrorKind::Other,
                "placement applies to models on this computer; the server places its own",
            )))),
            Command::Apply(_) => send(Event::Notice(
                "Placement applies to models on this computer; the server places its own.".into(),
            )),
            Command::Speculate(_) => {
                send(Event::Notice(
                    "Speculative decoding applies to models on this computer; a server runs its own (vLLM and llama-server have theirs)."
                        .into(),
                ));
                send(Event::Speculation(None));
            }
            Command::Shutdown => break,
        }
    }
    send(Event::Stopped { error: None });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(text: &str) -> (Result<(), RemoteError>, Reply, Vec<Delta>) {
        let mut reply = Reply::default();
        let mut seen = Vec::new();
        let r = read_stream(text.as_bytes(), Instant::now(), &mut reply, &mut |d| {
            seen.push(d.clone());
            true
        });
        (r, reply, seen)
    }

    #[test]
    fn a_stream_is_read_to_done() {
        let (r, reply, seen) = stream(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
             : keep-alive\n\n\
             data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n\
             data: {\"choices\":[{\"delta\":{\"content\":\"Pa\"}}]}\r\n\r\n\
             data: {\"choices\":[{\"delta\":{\"content\":\"ris\"},\"finish_reason\":\"stop\"}]}\n\n\
             data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\n\
             data: [DONE]\n\n",
        );
        r.unwrap();
        assert_eq!(reply.text, "Paris");
        assert_eq!(reply.reasoning, "hm");
        assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            (reply.prompt_tokens, reply.completion_tokens),
            (Some(5), Some(3))
        );
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn a_cut_stream_keeps_what_came_and_errors_say_so() {
        let (r, reply, _) = stream("data: {\"choices\":[{\"delta\":{\"content\":\"Hal\"}}]}\n\n");
        assert!(matches!(r, Err(RemoteError::Cut { .. })));
        assert_eq!(reply.text, "Hal");
        let (r, _, _) =
            stream("data: {\"error\":{\"message\":\"out of memory\",\"code\":500}}\n\n");
        assert!(
            matches!(r, Err(RemoteError::Server { status: 500, .. })),
            "{r:?}"
        );
        let (r, _, _) = stream("data: <html>\n\n");
        assert!(matches!(r, Err(RemoteError::BadAnswer { .. })));
    }

    #[test]
    fn a_silent_server_times_out_and_a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts, then never answers.
        let _hold = std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(2).collect();
            std::thread::sleep(Duration::from_secs(5));
            drop(held);
        });
        let mut r = Remote::new(&format!("http://{addr}/v1"), None);
        r.timeout = Duration::from_millis(500);
        let e = r.models().unwrap_err();
        assert!(matches!(e, RemoteError::Timeout { .. }), "{e:?}");
        assert!(e.advice().contains("try again"));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = Remote::new(&format!("http://{closed}/v1"), None)
            .models()
            .unwrap_err();
        assert!(matches!(e, RemoteError::Unreachable { .. }), "{e:?}");
    }

    #[test]
    fn the_body_carries_images_inline_and_only_useful_extensions() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("a.png");
        image::RgbImage::new(4, 4).save(&png).unwrap();
        let messages = [Message {
            role: "user".into(),
            content: json!([{"type": "image", "path": png}, {"type": "text", "text": "what?"}]),
        }];
        let greedy = SamplingParams::greedy();
        let req = ChatRequest {
            model: "m",
            messages: &messages,
            sampling: &greedy,
            max_tokens: Some(8),
            stop: &[],
            think: None,
        };
        let b = request_body(&req).unwrap();
        let url = b["messages"][0]["content"][0]["image_url"]["url"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("data:image/png;base64,"), "{url}");
        assert_eq!(b["temperature"], 0.0);
        assert!(b.get("top_k").is_none() && b.get("repetition_penalty").is_none());
        // A file that is not an image is the user's error, before sending.
        std::fs::write(&png, b"not an image").unwrap();
        assert!(matches!(request_body(&req), Err(RemoteError::Input(_))));
    }
}
