//! Conversations and chat templates. History persistence and RoboBrain task
//! prompts join this module with the desktop and vision work.

pub mod template;

pub use template::{ChatTemplate, Message, TemplateError};
