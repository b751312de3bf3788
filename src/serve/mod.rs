//! The OpenAI-compatible HTTP API (`spillway serve`, and the window's
//! "Serve API" setting): axum on a tokio runtime of its own, in front of the
//! one engine worker. Requests queue in order behind the window's own; a
//! client that goes away stops its reply at the next token.
//!
//! Routes: `POST /v1/chat/completions` (plain or server-sent events),
//! `GET /v1/models`, `GET /health`, `GET /v1/spillway/status`.

pub mod dispatch;
pub mod openai;
pub mod think;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub use dispatch::{Dispatch, Ticket};
use openai::{ApiError, ChatRequest, Checked, Defaults};
use think::ThinkSplitter;

use crate::protocol::{ErrorInfo, ErrorKind, Event, Finish, ReplyRequest, ReplyStats};

/// Bodies above this are refused before they are read whole (images come
/// inline as base64).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
/// Tokens within this many milliseconds stream as one delta: a reader
/// cannot tell 40 ms apart, and a small machine's compute threads are not
/// preempted once per token by the server and its client.
pub const DEFAULT_STREAM_INTERVAL_MS: u64 = 40;
/// Requests waiting or running at once; more get a 503.
pub const DEFAULT_QUEUE: usize = 16;
/// A remote image (with `--allow-remote-images`) larger than this is refused.
const MAX_REMOTE_IMAGE_BYTES: u64 = 32 << 20;

/// How a server is set up.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub api_key: Option<String>,
    pub allow_remote_images: bool,
    pub max_body_bytes: usize,
    pub defaults: Defaults,
    /// Tokens that arrive within this time go out as one streamed delta
    /// (`None`: each token at once).
    pub stream_interval: Option<std::time::Duration>,
}

struct AppState {
    dispatch: Arc<Dispatch>,
    opts: ServeOptions,
}

type Shared = Arc<AppState>;

/// The routes, with authentication and the body limit.
pub fn router(dispatch: Arc<Dispatch>, opts: ServeOptions) -> Router {
    let limit = opts.max_body_bytes;
    let state: Shared = Arc::new(AppState { dispatch, opts });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/spillway/status", get(status))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route("/health", get(health))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A running server: its address, and a handle that stops it.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets the replies under way end, and waits.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Binds `opts.addr` and serves on a thread of its own (a one-thread tokio
/// runtime; the engine does the heavy work on its thread). Binding errors
/// (port taken, no permission) come back here.
pub fn start(dispatch: Arc<Dispatch>, opts: ServeOptions) -> std::io::Result<Running> {
    // One thread: the engine is the bottleneck, and on a small machine
    // every extra thread woken per token takes a core from the compute
    // pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(opts.addr))?;
    let addr = listener.local_addr()?;
    let app = router(dispatch, opts);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("spillway-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
                if let Err(e) = served {
                    eprintln!("the API server stopped: {e}");
                }
            });
            // Streams still open are dropped with the runtime.
            runtime.shutdown_background();
        })?;
    Ok(Running {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

async fn authorize(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.opts.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Incorrect or missing API key: send it as \"Authorization: Bearer KEY\".",
            )
            .with_code("invalid_api_key")
            .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such route (POST /v1/chat/completions, GET /v1/models, /health, /v1/spillway/status)",
    )
}

async fn health(State(s): State<Shared>) -> Response {
    let st = s.dispatch.status();
    match (&st.model, &st.stopped) {
        (Some(_), None) => Json(json!({ "status": "ok" })).into_response(),
        (_, Some(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "error", "error": why })),
        )
            .into_response(),
        (None, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "loading" })),
        )
            .into_response(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn models(State(s): State<Shared>) -> Json<Value> {
    let st = s.dispatch.status();
    let data: Vec<Value> = st
        .model
        .iter()
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": unix_now(),
                "owned_by": "spillway",
                "max_model_len": m.context_length,
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// What the placement panel shows: the model, each layer's tier, the bytes
/// per tier, the queue and the live speeds.
async fn status(State(s): State<Shared>) -> Json<Value> {
    let st = s.dispatch.status();
    let model = st.model.as_ref().map(|m| {
        let p = &m.placement;
        json!({
            "id": m.name,
            "path": m.path,
            "context_length": m.context_length,
            "synthetic": m.synthetic,
            "vision": m.vision.is_some(),
            "thinking": m.thinking == Some(true),
            "placement": {
                "mode": p.mode.to_string(),
                "layers": p.layers.iter().zip(&m.layer_bytes).enumerate().map(|(i, (t, b))| {
                    json!({ "index": i, "tier": t.to_string(), "bytes": b })
                }).collect::<Vec<_>>(),
                "head": p.head.to_string(),
                "vision": p.vision.map(|t| t.to_string()),
                "tiers": p.tiers_json(),
                "predicted_prompt_tokens_per_sec": p.predicted_prompt_tokens_per_sec,
                "predicted_decode_tokens_per_sec": p.predicted_decode_tokens_per_sec,
            },
            "gpu": m.gpu_name,
            "budget_notes": m.budget_notes,
        })
    });
    Json(json!({
        "model": model,
        "engine": st.stopped.as_ref().map_or("running", |_| "stopped"),
        "engine_error": st.stopped,
        "telemetry": st.telemetry,
        "queue": {
            "in_flight": s.dispatch.in_flight(),
            "running": s.dispatch.running(),
            "limit": s.dispatch.queue_limit(),
            "served": s.dispatch.served(),
        },
        "uptime_secs": s.dispatch.uptime_secs(),
    }))
}

/// An engine error as an API error.
fn engine_error(e: &ErrorInfo) -> ApiError {
    let (status, kind, code) = match e.kind {
        ErrorKind::ContextFull => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("context_length_exceeded"),
        ),
        ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
        ErrorKind::NoModel => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("model_not_loaded"),
        ),
        ErrorKind::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None),
        ErrorKind::OutOfMemory
        | ErrorKind::DoesNotFit
        | ErrorKind::BadModel
        | ErrorKind::Remote
        | ErrorKind::Other => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
    };
    ApiError {
        code,
        ..ApiError::new(status, kind, e.message.clone())
    }
}

fn engine_gone(why: Option<String>) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        why.unwrap_or_else(|| "the engine has stopped".into()),
    )
}

/// Fetches the `http(s)` images a request names (allowed by
/// `--allow-remote-images`) and puts them inline as `data:` URLs.
async fn fetch_remote_images(checked: &mut Checked) -> Result<(), ApiError> {
    for &(m, p) in &checked.remote_images {
        let part = &mut checked.messages[m].content[p];
        let url = part["image"].as_str().unwrap_or_default().to_string();
        let data = tokio::task::spawn_blocking(move || fetch_image(&url))
            .await
            .map_err(|e| ApiError::bad_request(format!("fetching an image failed: {e}")))??;
        part["image"] = Value::String(data);
    }
    Ok(())
}

fn fetch_image(url: &str) -> Result<String, ApiError> {
    use base64::Engine as _;
    use std::io::Read;
    let failed =
        |why: String| ApiError::bad_request(format!("cannot fetch the image {url}: {why}"));
    let resp = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .get(url)
        .call()
        .map_err(|e| failed(e.to_string()))?;
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(MAX_REMOTE_IMAGE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| failed(e.to_string()))?;
    if bytes.len() as u64 > MAX_REMOTE_IMAGE_BYTES {
        return Err(failed(format!(
            "larger than {} MiB",
            MAX_REMOTE_IMAGE_BYTES >> 20
        )));
    }
    Ok(format!(
        "data:application/octet-stream;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    ))
}

fn completion_id() -> String {
    format!("chatcmpl-{:016x}", rand::random::<u64>())
}

/// llama-server's `timings` object, measured by the engine: what a client
/// can compare its own streaming rate against.
fn timings(stats: &ReplyStats) -> Value {
    json!({
        "prompt_n": stats.prompt_tokens.saturating_sub(stats.reused_tokens),
        "cache_n": stats.reused_tokens,
        "prompt_ms": stats.time_to_first_token_secs * 1e3,
        "predicted_n": stats.generated_tokens,
        "predicted_per_second": stats.decode_tokens_per_sec,
    })
}

fn usage(stats: &ReplyStats) -> Value {
    json!({
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
        "prompt_tokens_details": { "cached_tokens": stats.reused_tokens },
    })
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length | Finish::ContextFull => "length",
        Finish::EndOfTurn | Finish::Cancelled | Finish::Failed => "stop",
    }
}

/// Parses and checks the body, queues the request, and waits until the
/// engine has taken it (so an error still gets its status code).
async fn chat_completions(
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        ApiError::new(
            status,
            "invalid_request_error",
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "the request is larger than the server's limit of {} MiB",
                    s.opts.max_body_bytes >> 20
                )
            } else {
                format!("cannot read the request: {e}")
            },
        )
    })?;
    let req: ChatRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the request is not valid JSON for this route: {e}"))
    })?;
    let st = s.dispatch.status();
    if let Some(why) = st.stopped {
        return Err(engine_gone(Some(why)));
    }
    let Some(model) = st.model else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "no model is loaded yet",
        )
        .with_code("model_not_loaded"));
    };
    if let Some(name) = req.model.as_deref().filter(|n| !n.is_empty()) {
        let file = model.path.file_name().map(|f| f.to_string_lossy());
        if name != model.name && Some(name) != file.as_deref() {
            return Err(ApiError {
                param: Some("model".into()),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!(
                        "The model `{name}` does not exist: this server has `{}`",
                        model.name
                    ),
                )
                .with_code("model_not_found")
            });
        }
    }
    let mut checked = req.check(&s.opts.defaults, s.opts.allow_remote_images)?;
    fetch_remote_images(&mut checked).await?;
    let thinking = model.thinking == Some(true);
    let request = ReplyRequest {
        req_id: 0,
        messages: checked.messages.clone(),
        max_tokens: checked.max_tokens.unwrap_or(usize::MAX),
        sampling: checked.sampling.clone(),
        think: checked.think && thinking,
        // What the plan budgeted the vision tower for.
        max_pixels: Some(crate::placement::footprint::DEFAULT_MAX_IMAGE_PIXELS),
        stop: checked.stop.clone(),
        ignore_eos: checked.ignore_eos,
    };
    let mut ticket = s.dispatch.submit(request).map_err(|full| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!(
                "the server is busy: {} requests are waiting or running; retry later",
                full.limit
            ),
        )
        .with_code("queue_full")
    })?;
    // Until the engine starts it, a request can still fail with a status.
    let opened = loop {
        match ticket.next().await {
            Some(Event::Started {
                opened_thinking, ..
            }) => break opened_thinking,
            Some(Event::ReplyFailed { error, .. }) => return Err(engine_error(&error)),
            Some(Event::Finished { .. }) => {
                return Err(engine_gone(Some("the reply was stopped".into())))
            }
            Some(Event::Stopped { error }) => return Err(engine_gone(error)),
            Some(_) => {}
            None => return Err(engine_gone(None)),
        }
    };
    let reply = Reply {
        id: completion_id(),
        created: unix_now(),
        model: model.name.clone(),
        splitter: thinking.then(|| ThinkSplitter::new(opened)),
    };
    if checked.stream {
        Ok(stream(reply, ticket, checked.include_usage, s.opts.stream_interval).into_response())
    } else {
        whole(reply, ticket).await.map(IntoResponse::into_response)
    }
}

/// One reply's identity and its reasoning splitter.
struct Reply {
    id: String,
    created: u64,
    model: String,
    splitter: Option<ThinkSplitter>,
}

impl Reply {
    fn split(&mut self, text: &str) -> think::Delta {
        match &mut self.splitter {
            Some(s) => s.push(text),
            None => think::Delta {
                reasoning: String::new(),
                content: text.to_string(),
            },
        }
    }

    fn rest(&mut self) -> think::Delta {
        self.splitter
            .as_mut()
            .map(ThinkSplitter::finish)
            .unwrap_or_default()
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    }
}

/// The reply as one JSON object, once it is complete.
async fn whole(mut reply: Reply, mut ticket: Ticket) -> Result<Json<Value>, ApiError> {
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut failure = None;
    loop {
        match ticket.next().await {
            Some(Event::Token { text, .. }) => {
                let d = reply.split(&text);
                content += &d.content;
                reasoning += &d.reasoning;
            }
            Some(Event::ReplyFailed { error, .. }) => failure = Some(error),
            Some(Event::Finished { finish, stats, .. }) => {
                if let Some(e) = failure {
                    return Err(engine_error(&e));
                }
                let d = reply.rest();
                content += &d.content;
                reasoning += &d.reasoning;
                let mut message = json!({ "role": "assistant", "content": content });
                if reply.splitter.is_some() {
                    message["reasoning_content"] = json!(reasoning);
                }
                return Ok(Json(json!({
                    "id": reply.id,
                    "object": "chat.completion",
                    "created": reply.created,
                    "model": reply.model,
                    "choices": [{
                        "index": 0,
                        "message": message,
                        "finish_reason": finish_reason(finish),
                    }],
                    "usage": usage(&stats),
                    "timings": timings(&stats),
                })));
            }
            Some(Event::Stopped { error }) => return Err(engine_gone(error)),
            Some(_) => {}
            None => return Err(engine_gone(None)),
        }
    }
}

/// The reply as server-sent events: a role chunk, content (and reasoning)
/// deltas, a chunk with the finish reason, the usage when asked, `[DONE]`.
/// With an `interval`, the tokens that arrive within it go out as one
/// delta, so the server and the client wake once per interval rather than
/// once per token (vLLM's `--stream-interval`, in time). Dropping the
/// stream (the client left) drops the ticket, which stops the reply.
fn stream(
    reply: Reply,
    ticket: Ticket,
    include_usage: bool,
    interval: Option<std::time::Duration>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let first = reply.chunk(json!({ "role": "assistant", "content": "" }), None);
    let st = Streaming {
        reply,
        ticket,
        include_usage,
        queued: [first.to_string()].into(),
        done: false,
    };
    let events = futures_util::stream::unfold(st, move |mut st| async move {
        loop {
            if let Some(data) = st.queued.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), st));
            }
            if st.done {
                return None;
            }
            let Some(every) = interval else {
                let e = st.ticket.next().await;
                st.handle(e);
                continue;
            };
            // One wake-up per interval, however fast the tokens come.
            tokio::time::sleep(every).await;
            let mut text = String::new();
            loop {
                match st.ticket.try_next() {
                    Ok(Event::Token { text: t, .. }) => text.push_str(&t),
                    Ok(e) => {
                        st.tokens(&text);
                        text.clear();
                        st.handle(Some(e));
                    }
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                        st.tokens(&text);
                        text.clear();
                        st.handle(None);
                        break;
                    }
                }
            }
            st.tokens(&text);
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// A streamed reply's state: what is queued to send, and whether it ended.
struct Streaming {
    reply: Reply,
    ticket: Ticket,
    include_usage: bool,
    queued: std::collections::VecDeque<String>,
    done: bool,
}

impl Streaming {
    fn tokens(&mut self, text: &str) {
        if !text.is_empty() && !self.done {
            let d = self.reply.split(text);
            push_delta(&mut self.queued, &self.reply, d);
        }
    }

    fn end(&mut self, error: Option<String>) {
        self.queued.push_back(engine_gone(error).body().to_string());
        self.queued.push_back("[DONE]".into());
        self.done = true;
    }

    fn handle(&mut self, e: Option<Event>) {
        if self.done {
            return;
        }
        match e {
            Some(Event::Token { text, .. }) => self.tokens(&text),
            Some(Event::ReplyFailed { error, .. }) => {
                self.queued
                    .push_back(engine_error(&error).body().to_string());
            }
            Some(Event::Finished { finish, stats, .. }) => {
                let d = self.reply.rest();
                push_delta(&mut self.queued, &self.reply, d);
                if finish != Finish::Failed {
                    self.queued.push_back(
                        self.reply
                            .chunk(json!({}), Some(finish_reason(finish)))
                            .to_string(),
                    );
                }
                if self.include_usage {
                    let mut u = self.reply.chunk(json!({}), None);
                    u["choices"] = json!([]);
                    u["usage"] = usage(&stats);
                    u["timings"] = timings(&stats);
                    self.queued.push_back(u.to_string());
                }
                self.queued.push_back("[DONE]".into());
                self.done = true;
            }
            Some(Event::Stopped { error }) => self.end(error),
            Some(_) => {}
            None => self.end(None),
        }
    }
}

fn push_delta(queued: &mut std::collections::VecDeque<String>, reply: &Reply, d: think::Delta) {
    if !d.reasoning.is_empty() {
        queued.push_back(
            reply
                .chunk(json!({ "reasoning_content": d.reasoning }), None)
                .to_string(),
        );
    }
    if !d.content.is_empty() {
        queued.push_back(
            reply
                .chunk(json!({ "content": d.content }), None)
                .to_string(),
        );
    }
}
