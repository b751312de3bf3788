//! The chat panels: the conversation list (new, rename, delete, search by
//! title) and the conversation itself (markdown messages with copyable
//! code, the reply streaming in, stop / regenerate / edit-and-resend, speed
//! under each reply, the system prompt), and the composer (Enter sends,
//! Shift+Enter adds a line). They draw and return actions; the app applies
//! them after the frame.

use egui_commonmark::{CommonMarkCache, CommonMarkViewer};

use super::app::SpillwayApp;
use super::images;
use crate::vision::tasks::Task;

#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum ChatAction {
    Send,
    Stop,
    Regenerate,
    EditResend {
        index: usize,
        text: String,
    },
    New,
    Select(usize),
    Delete(usize),
    Rename {
        index: usize,
        title: String,
    },
    SystemPrompt(String),
    /// Open the file dialog to attach images.
    AttachDialog,
    /// Pick a folder of frames (the progress task).
    AttachFolder,
    RemoveAttachment(usize),
    /// Save the image of the question before reply `index` with the
    /// reply's shapes drawn on it.
    SaveAnnotated(usize),
}

/// Panel state that is not part of the conversation.
#[derive(Debug, Clone, Default)]
pub struct ChatState {
    pub search: String,
    /// The conversation being renamed, and the title typed so far.
    pub renaming: Option<(usize, String)>,
    /// The user message being edited, and its new text.
    pub editing: Option<(usize, String)>,
    pub show_system_prompt: bool,
}

pub fn conversation_list_ui(ui: &mut egui::Ui, app: &mut SpillwayApp) -> Vec<ChatAction> {
    let mut actions = Vec::new();
    ui.horizontal(|ui| {
        ui.heading("Conversations");
        if ui.button("New").on_hover_text("New conversation").clicked() {
            actions.push(ChatAction::New);
        }
    });
    ui.add(
        egui::TextEdit::singleline(&mut app.chat_state.search)
            .hint_text("Search titles")
            .desired_width(f32::INFINITY),
    );
    ui.separator();
    let needle = app.chat_state.search.to_lowercase();
    egui::ScrollArea::vertical().show(ui, |ui| {
        for (i, c) in app.conversations.iter().enumerate() {
            if !needle.is_empty() && !c.title.to_lowercase().contains(&needle) {
                continue;
            }
            if let Some((idx, title)) = &mut app.chat_state.renaming {
                if *idx == i {
                    let r = ui.text_edit_singleline(title);
                    if r.lost_focus() {
                        actions.push(ChatAction::Rename {
                            index: i,
                            title: title.clone(),
                        });
                        app.chat_state.renaming = None;
                    }
                    continue;
                }
            }
            ui.horizontal(|ui| {
                // Long titles are cut to the panel's width (whole on hover)
                // instead of widening the panel.
                let r = ui
                    .add(egui::Button::selectable(i == app.current, c.title.as_str()).truncate())
                    .on_hover_text(&c.title);
                if r.clicked() {
                    actions.push(ChatAction::Select(i));
                }
                r.context_menu(|ui| {
                    if ui.button("Rename").clicked() {
                        app.chat_state.renaming = Some((i, c.title.clone()));
                        ui.close();
                    }
                    if ui.button("Delete").clicked() {
                        actions.push(ChatAction::Delete(i));
                        ui.close();
                    }
                });
            });
        }
    });
    actions
}

pub fn chat_ui(
    ui: &mut egui::Ui,
    app: &mut SpillwayApp,
    md: &mut CommonMarkCache,
) -> Vec<ChatAction> {
    let mut actions = Vec::new();
    let streaming = app.streaming.is_some();
    let conv = &app.conversations[app.current];

    ui.horizontal(|ui| {
        ui.heading(&conv.title);
        ui.toggle_value(&mut app.chat_state.show_system_prompt, "System prompt");
    });
    if app.chat_state.show_system_prompt {
        let mut prompt = conv.system_prompt.clone();
        let r = ui.add(
            egui::TextEdit::multiline(&mut prompt)
                .hint_text("Instructions for the model in this conversation")
                .desired_rows(2)
                .desired_width(f32::INFINITY),
        );
        if r.changed() {
            actions.push(ChatAction::SystemPrompt(prompt));
        }
    }
    ui.separator();

    let composer_height = if app.attachments.is_empty() {
        120.0
    } else {
        210.0
    };
    let processor = app.image_processor();
    let n = conv.messages.len();
    let last_reply = conv.messages.iter().rposition(|m| m.role == "assistant");
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .max_height(ui.available_height() - composer_height)
        .stick_to_bottom(true)
        .show(ui, |ui| {
            for (i, m) in conv.messages.iter().enumerate() {
                let is_user = m.role == "user";
                egui::Frame::group(ui.style()).show(ui, |ui| {
                    ui.set_width(ui.available_width());
                    ui.horizontal(|ui| {
                        ui.strong(if is_user { "You" } else { "Spillway" });
                        if ui.small_button("Copy").clicked() {
                            ui.copy_text(m.text.clone());
                        }
                        if is_user && !streaming && ui.small_button("Edit").clicked() {
                            app.chat_state.editing = Some((i, m.text.clone()));
                        }
                        if Some(i) == last_reply
                            && !streaming
                            && ui.small_button("Regenerate").clicked()
                        {
                            actions.push(ChatAction::Regenerate);
                        }
                    });
                    match &mut app.chat_state.editing {
                        Some((idx, text)) if *idx == i => {
                            ui.add(egui::TextEdit::multiline(text).desired_width(f32::INFINITY));
                            let (mut resend, mut cancel) = (false, false);
                            ui.horizontal(|ui| {
                                resend = ui.button("Save & resend").clicked();
                                cancel = ui.button("Cancel").clicked();
                            });
                            if resend {
                                actions.push(ChatAction::EditResend {
                                    index: i,
                                    text: text.clone(),
                                });
                            }
                            if resend || cancel {
                                app.chat_state.editing = None;
                            }
                        }
                        _ if is_user => {
                            if !m.images.is_empty() {
                                // A row that fits the message: many frames
                                // get smaller thumbnails.
                                let fit = ui.available_width() / m.images.len() as f32 - 8.0;
                                ui.horizontal_wrapped(|ui| {
                                    for (k, a) in m.images.iter().enumerate() {
                                        thumbnail(
                                            ui,
                                            &mut app.textures,
                                            a,
                                            &processor,
                                            (i, k),
                                            fit,
                                        );
                                    }
                                });
                            }
                            if m.task == Task::Progress {
                                ui.small(format!("progress over {} frames", m.images.len()));
                            } else if m.task != Task::General {
                                ui.small(format!("{} task", m.task));
                            }
                            ui.label(&m.text);
                        }
                        _ => {
                            if m.text.is_empty() && streaming && i + 1 == n {
                                let read = app.streaming.as_ref().and_then(|s| s.prompt);
                                ui.horizontal(|ui| {
                                    ui.spinner();
                                    match read {
                                        Some((done, total)) => {
                                            ui.label(format!(
                                                "Reading the prompt: {done} of {total} tokens"
                                            ));
                                            ui.add(
                                                egui::ProgressBar::new(
                                                    done as f32 / total.max(1) as f32,
                                                )
                                                .desired_width(160.0),
                                            );
                                        }
                                        None => {
                                            ui.label("Reading the prompt…");
                                        }
                                    }
                                });
                            } else {
                                reply_text(ui, md, &m.text, i);
                            }
                            // An answer with coordinates, drawn on the question's image.
                            let question =
                                conv.messages[..i].iter().rev().find(|q| q.role == "user");
                            // A progress estimate, plotted under its frames.
                            if let (false, Some(q)) = (m.progress.is_empty(), question) {
                                images::progress_plot(
                                    ui,
                                    &mut app.textures,
                                    &q.images,
                                    &m.progress,
                                    ui.make_persistent_id(("progress", i)),
                                );
                            }
                            let question = question.filter(|q| q.task != Task::Progress);
                            let shapes = question.and_then(|q| {
                                images::answer_shapes(q, &m.text, &processor).map(|s| (q, s))
                            });
                            if let (Some((q, shapes)), false) = (shapes, streaming && i + 1 == n) {
                                let a = &q.images[0];
                                match app.textures.get(ui.ctx(), &a.path) {
                                    Ok(tex) => {
                                        let w = ui.available_width().min(480.0);
                                        images::image_with_overlay(
                                            ui,
                                            &tex,
                                            (a.width, a.height),
                                            Some(&shapes),
                                            w,
                                            ui.make_persistent_id(("overlay", i)),
                                            app.settings.intrinsics.as_ref(),
                                        );
                                        ui.horizontal(|ui| {
                                            if ui
                                                .small_button("Save annotated image…")
                                                .on_hover_text(
                                                    "A PNG, and the shapes as JSON beside it",
                                                )
                                                .clicked()
                                            {
                                                actions.push(ChatAction::SaveAnnotated(i));
                                            }
                                            if ui.small_button("Copy as JSON").clicked() {
                                                let j = shapes
                                                    .to_json(app.settings.intrinsics.as_ref());
                                                ui.ctx().copy_text(
                                                    serde_json::to_string_pretty(&j)
                                                        .unwrap_or_default(),
                                                );
                                            }
                                        });
                                    }
                                    Err(e) => {
                                        ui.small(format!("The image cannot be shown: {e}"));
                                    }
                                }
                            }
                            if let Some(s) = &m.stats {
                                let drafted = s.acceptance().map_or(String::new(), |a| {
                                    format!(" · {:.0}% of drafted tokens accepted", 100.0 * a)
                                });
                                ui.small(format!(
                                    "first token {:.2} s · {:.1} tokens/s · {} tokens{drafted}",
                                    s.time_to_first_token_secs,
                                    s.decode_tokens_per_sec,
                                    s.generated_tokens
                                ));
                            }
                            if m.incomplete && !(streaming && i + 1 == n) {
                                ui.small("(stopped)");
                            }
                        }
                    }
                });
            }
        });

    ui.separator();
    composer_tools_ui(ui, app, &processor, &mut actions);
    ui.horizontal(|ui| {
        let edit = egui::TextEdit::multiline(&mut app.composer)
            .hint_text("Message (Enter sends, Shift+Enter adds a line)")
            .desired_rows(3)
            .desired_width(ui.available_width() - 90.0)
            .id_salt("composer");
        let r = ui.add(edit);
        // Enter sends; Shift+Enter is a new line (the text edit adds it).
        let enter =
            r.has_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter) && !i.modifiers.shift);
        if enter {
            // The text edit has already added the newline.
            while app.composer.ends_with('\n') {
                app.composer.pop();
            }
        }
        ui.vertical(|ui| {
            if streaming {
                if ui.button("Stop").clicked() {
                    actions.push(ChatAction::Stop);
                }
            } else if ui.button("Send").clicked() || enter {
                actions.push(ChatAction::Send);
            }
        });
    });
    actions
}

/// A thumbnail with the image's size and token cost, at most `max_w`
/// points wide (and at least 32).
fn thumbnail(
    ui: &mut egui::Ui,
    textures: &mut images::Textures,
    a: &crate::chat::history::Attachment,
    processor: &crate::vision::ProcessorConfig,
    id: (usize, usize),
    max_w: f32,
) {
    ui.vertical(|ui| {
        match textures.get(ui.ctx(), &a.path) {
            Ok(tex) => {
                let w = (96.0 * (a.width as f32 / a.height.max(1) as f32).clamp(0.5, 2.0))
                    .min(max_w)
                    .max(32.0);
                ui.set_max_width(w);
                images::image_with_overlay(
                    ui,
                    &tex,
                    (a.width, a.height),
                    None,
                    w,
                    ui.make_persistent_id(("thumb", id)),
                    None,
                );
            }
            Err(e) => {
                ui.small(format!("unreadable image: {e}"));
            }
        }
        let cost = images::model_frame(a, processor)
            .map_or_else(String::new, |(_, tokens)| format!(" · {tokens} tokens"));
        ui.small(format!("{}×{}{cost}", a.width, a.height));
    });
}

/// Above the composer: attach images, the task, thinking, and the
/// attached images with their token cost.
fn composer_tools_ui(
    ui: &mut egui::Ui,
    app: &mut SpillwayApp,
    processor: &crate::vision::ProcessorConfig,
    actions: &mut Vec<ChatAction>,
) {
    let vision = app.model.as_ref().is_some_and(|m| m.vision.is_some());
    if !vision && !app.model_can_think() {
        return;
    }
    ui.horizontal(|ui| {
        if !vision {
            ui.checkbox(&mut app.think, "Think first")
                .on_hover_text("The model reasons in <think> before answering (folded under \"Thinking\")");
            return;
        }
        if ui
            .button("Attach image…")
            .on_hover_text("Also: drop image files on the window, or paste an image")
            .clicked()
        {
            actions.push(ChatAction::AttachDialog);
        }
        let l = ui.label("Task:");
        egui::ComboBox::from_id_salt("task")
            .selected_text(app.task.to_string())
            .show_ui(ui, |ui| {
                for &t in app.family().tasks() {
                    ui.selectable_value(&mut app.task, t, t.to_string())
                        .on_hover_text(t.hint());
                }
            })
            .response
            .labelled_by(l.id)
            .on_hover_text("RoboBrain 2.0 task modes: the question is worded as RoboBrain expects and the answer drawn on the image");
        if app.model_can_think() {
            ui.checkbox(&mut app.think, "Think first")
                .on_hover_text("Qwen3 and RoboBrain 7B/32B reason in <think> before answering (folded under \"Thinking\")");
        }
        if app.task == Task::Progress {
            if ui
                .button("Attach frames folder…")
                .on_hover_text("A folder of frames in name order; at most 12 are judged, evenly spread")
                .clicked()
            {
                actions.push(ChatAction::AttachFolder);
            }
            let l = ui.label("Compare:");
            egui::ComboBox::from_id_salt("progress_mode")
                .selected_text(app.progress_mode.to_string())
                .show_ui(ui, |ui| {
                    use crate::vision::tasks::ProgressMode;
                    ui.selectable_value(&mut app.progress_mode, ProgressMode::Incremental, "incremental")
                        .on_hover_text("Each frame against the one before; the steps add up");
                    ui.selectable_value(&mut app.progress_mode, ProgressMode::Forward, "forward")
                        .on_hover_text("Each frame against the first");
                })
                .response
                .labelled_by(l.id);
        }
        if app.task != Task::General {
            // Cut to the row: the composer's Send button stays in view.
            ui.add(egui::Label::new(egui::RichText::new(app.task.hint()).weak()).truncate());
        }
    });
    if app.attachments.is_empty() {
        return;
    }
    let mut remove = None;
    ui.horizontal(|ui| {
        for (k, a) in app.attachments.iter().enumerate() {
            ui.vertical(|ui| {
                thumbnail(
                    ui,
                    &mut app.textures,
                    a,
                    processor,
                    (usize::MAX, k),
                    f32::INFINITY,
                );
                if ui.small_button("Remove").clicked() {
                    remove = Some(k);
                }
            });
        }
    });
    if let Some(k) = remove {
        actions.push(ChatAction::RemoveAttachment(k));
    }
}

/// A reply: a RoboBrain thinking section (`…</think><answer>…`) folded
/// away under "Thinking", the answer as markdown.
fn reply_text(ui: &mut egui::Ui, md: &mut CommonMarkCache, text: &str, i: usize) {
    if !(text.contains("</think>") || text.contains("<answer>")) {
        CommonMarkViewer::new().show(ui, md, text);
        return;
    }
    let split = crate::vision::tasks::split_thinking(text, false);
    if !split.thinking.is_empty() {
        egui::CollapsingHeader::new("Thinking")
            .id_salt(("thinking", i))
            .show(ui, |ui| {
                ui.label(&split.thinking);
            });
    }
    CommonMarkViewer::new().show(ui, md, &split.answer);
}
