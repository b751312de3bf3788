//! Chat templates: the Jinja template a model ships, rendered with minijinja
//! the way Hugging Face's `apply_chat_template` renders it (trimmed blocks,
//! `raise_exception`, `strftime_now`, Python string methods, `bos_token` and
//! `eos_token` in scope).

use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the model's chat template does not parse: {0}")]
    Syntax(String),
    #[error("the chat template refused these messages: {0}")]
    Render(String),
    #[error("the model has no chat template; pass --raw to send the prompt as plain text")]
    Missing,
}

/// One chat message in the Hugging Face / OpenAI form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    /// A string, or a list of content parts (`{"type": "text", ...}`).
    pub content: serde_json::Value,
}

impl Message {
    pub fn new(role: &str, text: &str) -> Self {
        Message {
            role: role.to_string(),
            content: serde_json::Value::String(text.to_string()),
        }
    }

    /// The text of the message; parts of type "text" are joined.
    pub fn text(&self) -> String {
        match &self.content {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The source reads `enable_thinking`.
    thinks: bool,
    enable_thinking: Option<bool>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// `strftime_now` for the formats chat templates use (%d %m %Y %B %b %y %H %M).
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('B') => out.push_str(name),
            Some('b') => out.push_str(&name[..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // Hugging Face renders with trim_blocks and lstrip_blocks on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(ChatTemplate {
            thinks: source.contains("enable_thinking"),
            enable_thinking: None,
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Whether the template has a thinking switch (`enable_thinking`, as
    /// Qwen3's has).
    pub fn has_thinking_switch(&self) -> bool {
        self.thinks
    }

    /// Sets the template's `enable_thinking` (unset: the template's own
    /// default, thinking for Qwen3).
    pub fn set_thinking(&mut self, on: Option<bool>) {
        self.enable_thinking = on;
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends
    /// where the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        // A template is code from a file: it renders with bounded work
        // (fuel: instructions) and bounded output, so a hostile one fails
        // with an error instead of spinning or filling memory.
        let mut env_fuel = self.env.clone();
        env_fuel.set_fuel(Some(
            TEMPLATE_FUEL.saturating_add(TEMPLATE_FUEL_PER_MESSAGE * messages.len() as u64),
        ));
        let tmpl = env_fuel
            .get_template("chat")
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        let input: usize = messages.iter().map(|m| m.content.to_string().len()).sum();
        let mut out = LimitedWriter {
            buf: Vec::new(),
            limit: TEMPLATE_OUTPUT_BYTES.saturating_add(input.saturating_mul(2)),
        };
        let base = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        let ctx = match self.enable_thinking {
            Some(on) => minijinja::context! { enable_thinking => on, ..base },
            None => base,
        };
        let rendered = tmpl.render_captured_to(ctx, &mut out);
        match rendered {
            Ok(_) => String::from_utf8(out.buf)
                .map_err(|_| TemplateError::Render("the template wrote invalid UTF-8".into())),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(TemplateError::Render(
                "the chat template did not finish within its work limit".into(),
            )),
            Err(e) if e.kind() == ErrorKind::WriteFailure => Err(TemplateError::Render(format!(
                "the chat template wrote more than {} MiB",
                out.limit >> 20
            ))),
            Err(e) => {
                // Keep the message one line and name the exception's own text.
                let mut msg = e.to_string();
                if let Some(detail) = e.detail() {
                    msg = format!("{msg}: {detail}");
                }
                Err(TemplateError::Render(msg.replace('\n', " ")))
            }
        }
    }
}

/// Instructions a template may run for a conversation: a base, plus a
/// share per message (real templates run a few hundred per message).
const TEMPLATE_FUEL: u64 = 2_000_000;
const TEMPLATE_FUEL_PER_MESSAGE: u64 = 20_000;
/// Bytes a rendered prompt may hold beyond twice the messages' own text.
const TEMPLATE_OUTPUT_BYTES: usize = 16 << 20;

/// A writer that refuses to grow past `limit` bytes.
struct LimitedWriter {
    buf: Vec<u8>,
    limit: usize,
}

impl std::io::Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let out = t
            .render(
                &[
                    Message::new("system", "Be brief."),
                    Message::new("user", "Hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn trims_blocks_uses_bos_and_python_methods() {
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'user' %}\n[INST] {{ m.content.strip() }} [/INST]\n  {% else %}\n{{ m['content'] }}{{ eos_token }}\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t
            .render(
                &[
                    Message::new("user", "  hello  "),
                    Message::new("assistant", "yo"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(out, "<s>[INST] hello [/INST]\nyo</s>\n");
    }

    #[test]
    fn raise_exception_becomes_a_render_error() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let err = t
            .render(&[Message::new("assistant", "x")], true)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Conversation must start with user"),
            "{err}"
        );
        assert_eq!(t.render(&[Message::new("user", "x")], true).unwrap(), "ok");
    }

    #[test]
    fn bad_syntax_is_an_error() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(TemplateError::Syntax(_))
        ));
    }

    #[test]
    fn strftime_now_formats_a_date() {
        let s = strftime_now("%d %B %Y".into());
        assert_eq!(s.split(' ').count(), 3, "{s}");
        assert!(s.split(' ').nth(2).unwrap().parse::<i32>().unwrap() >= 2024);
    }
}
