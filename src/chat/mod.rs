//! Conversations and chat templates: the history kept on disk, and the
//! templates that turn a conversation into the model's prompt. RoboBrain
//! task prompts join this module with the vision work.

pub mod history;
pub mod template;

pub use template::{ChatTemplate, Message, TemplateError};
