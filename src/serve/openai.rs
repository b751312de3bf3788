//! The OpenAI chat-completions request as Spillway reads it: every field it
//! acts on is checked, every field it cannot honour is refused with a 400
//! (never silently ignored), and errors carry OpenAI's JSON shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::chat::Message;
use crate::model::sampler::SamplingParams;

/// An error as the OpenAI API sends it: `{"error": {message, type, param,
/// code}}` with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            code: None,
            param: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// A request field Spillway refuses.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::bad_request(message)
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
}

/// `POST /v1/chat/completions`, as parsed.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    /// vLLM's and llama-server's extension (Hugging Face's rule); 1 is off.
    pub repetition_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub n: Option<i64>,
    /// vLLM's extension: keep generating past the end-of-turn token.
    #[serde(default)]
    pub ignore_eos: bool,
    /// vLLM's switch for templates that think (`{"enable_thinking": …}`).
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    /// Everything else, checked against what Spillway cannot do.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// Defaults for what a request leaves out: the user's generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// Hugging Face's repetition penalty (not an OpenAI field; vLLM's
    /// `repetition_penalty` overrides it).
    pub repetition_penalty: f32,
}

/// A request checked and turned into what the engine takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub messages: Vec<Message>,
    pub sampling: SamplingParams,
    /// `None`: until the context is full.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub think: bool,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// `http(s)` image URLs to fetch first (allowed by the server's flag),
    /// as (message, part) indices.
    pub remote_images: Vec<(usize, usize)>,
}

/// Fields that change the answer's meaning or shape which Spillway does not
/// implement: refused, not ignored.
const UNSUPPORTED: [(&str, &str); 9] = [
    ("tools", "tool calling is not supported"),
    ("functions", "function calling is not supported"),
    ("tool_choice", "tool calling is not supported"),
    ("function_call", "function calling is not supported"),
    ("logprobs", "log probabilities are not returned"),
    ("top_logprobs", "log probabilities are not returned"),
    ("logit_bias", "logit_bias is not supported"),
    (
        "response_format",
        "structured output (response_format) is not supported",
    ),
    ("audio", "audio output is not supported"),
];

fn unsupported_is_set(key: &str, v: &Value) -> bool {
    match (key, v) {
        (_, Value::Null) => false,
        ("logprobs", Value::Bool(b)) => *b,
        ("tool_choice", Value::String(s)) => s != "none",
        ("tools" | "functions", Value::Array(a)) => !a.is_empty(),
        ("logit_bias", Value::Object(o)) => !o.is_empty(),
        ("response_format", Value::Object(o)) => {
            o.get("type").and_then(Value::as_str) != Some("text")
        }
        _ => true,
    }
}

fn in_range(param: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<Option<f32>, ApiError> {
    match v {
        Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => Err(ApiError::bad_param(
            param,
            format!("{param} must be between {lo} and {hi}, not {x}"),
        )),
        v => Ok(v),
    }
}

impl ChatRequest {
    /// Checks every field and builds the engine's request. `defaults` fill
    /// the sampling fields left out; a missing seed is drawn at random, as
    /// OpenAI's replies differ between calls.
    pub fn check(
        self,
        defaults: &Defaults,
        allow_remote_images: bool,
    ) -> Result<Checked, ApiError> {
        for (key, why) in UNSUPPORTED {
            if let Some(v) = self.rest.get(key) {
                if unsupported_is_set(key, v) {
                    return Err(ApiError::bad_param(key, format!("{why} by Spillway")));
                }
            }
        }
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::bad_param("n", "only n = 1 is supported"));
            }
        }
        if self.messages.is_empty() {
            return Err(ApiError::bad_param(
                "messages",
                "messages must not be empty",
            ));
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) | (None, Some(n)) if n < 1 => {
                return Err(ApiError::bad_param(
                    "max_tokens",
                    format!("max_tokens must be at least 1, not {n}"),
                ))
            }
            (Some(n), _) | (None, Some(n)) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            (None, None) => None,
        };
        let temperature = in_range("temperature", self.temperature, 0.0, 2.0)?;
        let top_p = in_range("top_p", self.top_p, 0.0, 1.0)?;
        let min_p = in_range("min_p", self.min_p, 0.0, 1.0)?;
        let frequency_penalty = in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        let presence_penalty = in_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        let repetition_penalty =
            in_range("repetition_penalty", self.repetition_penalty, 0.01, 10.0)?;
        if top_p == Some(0.0) {
            return Err(ApiError::bad_param("top_p", "top_p must be above 0"));
        }
        let top_k = match self.top_k {
            // vLLM's -1 (and 0) mean no limit.
            None => defaults.top_k,
            Some(k) if k <= 0 => {
                if k < -1 {
                    return Err(ApiError::bad_param(
                        "top_k",
                        "top_k must be -1, 0 or positive",
                    ));
                }
                0
            }
            Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
        };
        let seed = match self.seed {
            Some(s) => s as u64,
            None => rand::random(),
        };
        let sampling = SamplingParams {
            temperature: temperature.unwrap_or(defaults.temperature),
            top_k,
            top_p: top_p.unwrap_or(defaults.top_p),
            min_p: min_p.unwrap_or(defaults.min_p),
            repetition_penalty: repetition_penalty.unwrap_or(defaults.repetition_penalty),
            repetition_window: 64,
            frequency_penalty: frequency_penalty.unwrap_or(0.0),
            presence_penalty: presence_penalty.unwrap_or(0.0),
            seed,
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        if stop.len() > 16 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(ApiError::bad_param(
                "stop",
                "stop takes at most 16 strings, each 1 to 256 bytes",
            ));
        }
        let think = match self
            .chat_template_kwargs
            .as_ref()
            .and_then(|k| k.get("enable_thinking"))
        {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::bad_param(
                    "chat_template_kwargs",
                    "enable_thinking must be true or false",
                ))
            }
        };
        let mut remote_images = Vec::new();
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let (content, remote) = convert_content(i, &m.role, m.content, allow_remote_images)?;
            remote_images.extend(remote.into_iter().map(|p| (i, p)));
            messages.push(Message {
                role: m.role,
                content,
            });
        }
        Ok(Checked {
            messages,
            sampling,
            max_tokens,
            stop,
            think,
            ignore_eos: self.ignore_eos,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            remote_images,
        })
    }
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// A message's content as the chat template takes it: a string, or parts
/// `{"type": "text", "text"}` and `{"type": "image", "image": URL}`. Returns
/// the indices of parts that are remote image URLs.
fn convert_content(
    i: usize,
    role: &str,
    content: Option<Value>,
    allow_remote: bool,
) -> Result<(Value, Vec<usize>), ApiError> {
    let param = format!("messages[{i}]");
    if !ROLES.contains(&role) {
        return Err(ApiError::bad_param(
            &param,
            format!("unknown role {role:?} (system, developer, user, assistant or tool)"),
        ));
    }
    let parts = match content {
        None | Some(Value::Null) if role == "assistant" => return Ok((json!(""), Vec::new())),
        Some(Value::String(s)) => return Ok((Value::String(s), Vec::new())),
        Some(Value::Array(parts)) => parts,
        _ => {
            return Err(ApiError::bad_param(
                &param,
                "content must be a string or a list of content parts",
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    let mut remote = Vec::new();
    for (j, p) in parts.into_iter().enumerate() {
        let ty = p.get("type").and_then(Value::as_str).unwrap_or_default();
        match ty {
            "text" => {
                let text = p.get("text").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_param(&param, "a text part needs a \"text\" string")
                })?;
                out.push(json!({ "type": "text", "text": text }));
            }
            "image_url" => {
                let url = match p.get("image_url") {
                    Some(Value::String(u)) => Some(u.as_str()),
                    Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                    _ => None,
                }
                .ok_or_else(|| {
                    ApiError::bad_param(&param, "an image_url part needs {\"url\": …}")
                })?;
                if url.starts_with("http://") || url.starts_with("https://") {
                    if !allow_remote {
                        return Err(ApiError::bad_param(
                            &param,
                            "image URLs on the web are not fetched (start the server with --allow-remote-images); send the image as a data: URL",
                        ));
                    }
                    remote.push(j);
                } else if !url.starts_with("data:") {
                    return Err(ApiError::bad_param(
                        &param,
                        "an image must be a data: URL (data:image/png;base64,…)",
                    ));
                }
                out.push(json!({ "type": "image", "image": url }));
            }
            other => {
                return Err(ApiError::bad_param(
                    &param,
                    format!("content parts of type {other:?} are not supported (text, image_url)"),
                ))
            }
        }
    }
    Ok((Value::Array(out), remote))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.1,
        }
    }

    fn check(v: Value) -> Result<Checked, ApiError> {
        let r: ChatRequest = serde_json::from_value(v).unwrap();
        r.check(&defaults(), false)
    }

    #[test]
    fn fields_are_honoured() {
        let c = check(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0, "top_p": 0.5, "top_k": -1, "seed": 7, "stop": "END",
            "max_completion_tokens": 9, "frequency_penalty": 0.5,
            "stream": true, "stream_options": {"include_usage": true},
            "chat_template_kwargs": {"enable_thinking": true}
        }))
        .unwrap();
        assert!(c.sampling.is_greedy());
        assert_eq!(c.sampling.top_k, 0);
        assert_eq!(c.sampling.top_p, 0.5);
        assert_eq!(c.sampling.seed, 7);
        assert_eq!(c.sampling.frequency_penalty, 0.5);
        assert_eq!(c.sampling.repetition_penalty, 1.1);
        assert_eq!(c.stop, ["END"]);
        assert_eq!(c.max_tokens, Some(9));
        assert!(c.stream && c.include_usage && c.think);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        let base = |k: &str, v: Value| {
            let mut r = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            r[k] = v;
            check(r)
        };
        for (k, v) in [
            ("n", json!(2)),
            ("temperature", json!(3.0)),
            ("top_p", json!(0)),
            ("max_tokens", json!(0)),
            ("tools", json!([{"type": "function"}])),
            ("logprobs", json!(true)),
            ("response_format", json!({"type": "json_object"})),
            ("presence_penalty", json!(5)),
            ("stop", json!([""])),
        ] {
            let e = base(k, v.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{k}={v}");
            assert_eq!(e.param.as_deref(), Some(k), "{k}");
        }
        // Harmless defaults pass.
        for (k, v) in [
            ("logprobs", json!(false)),
            ("tools", json!([])),
            ("response_format", json!({"type": "text"})),
            ("user", json!("me")),
        ] {
            base(k, v).unwrap();
        }
    }

    #[test]
    fn images_must_be_inline_unless_allowed() {
        let msg = |url: &str| {
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": url}}
            ]}]})
        };
        let c = check(msg("data:image/png;base64,AAAA")).unwrap();
        assert_eq!(
            c.messages[0].content[1]["image"],
            "data:image/png;base64,AAAA"
        );
        assert!(check(msg("https://example.com/a.png")).is_err());
        assert!(check(msg("/etc/passwd")).is_err());
        let r: ChatRequest = serde_json::from_value(msg("https://example.com/a.png")).unwrap();
        assert_eq!(r.check(&defaults(), true).unwrap().remote_images, [(0, 1)]);
    }
}
