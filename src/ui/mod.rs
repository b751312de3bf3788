//! The desktop window (eframe/egui). It never touches a tensor or blocks:
//! it sends [`crate::protocol::Command`]s to the engine worker and drains
//! its events once per frame. One file per panel: `chat` (conversation
//! list, messages, composer), `settings` (model, placement, sampling),
//! `placement` (the layer strip, gauges, speed plot and what-if preview);
//! `app` holds the state and applies events.

pub mod app;
pub mod chat;
pub mod placement;
pub mod settings;

use std::path::PathBuf;
use std::sync::Arc;

pub use app::SpillwayApp;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("cannot open the window: {0}")]
    Window(String),
}

/// Opens the window (and loads `model` when given); returns when it closes.
pub fn run(config: Config, model: Option<PathBuf>) -> Result<(), UiError> {
    let dirs = directories::ProjectDirs::from("", "", "spillway");
    let data_dir = dirs.as_ref().map(|d| d.data_dir().to_path_buf());
    let config_dir = dirs.as_ref().map(|d| d.config_dir().to_path_buf());
    let icon = eframe::icon_data::from_png_bytes(include_bytes!("../../assets/spillway.png")).ok();
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Spillway")
        .with_app_id("spillway")
        .with_inner_size([1200.0, 780.0])
        .with_min_inner_size([640.0, 420.0]);
    if let Some(icon) = icon {
        viewport = viewport.with_icon(Arc::new(icon));
    }
    let options = eframe::NativeOptions {
        viewport,
        // Window size and panel layout are remembered by eframe.
        persist_window: true,
        ..Default::default()
    };
    eframe::run_native(
        "spillway",
        options,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            let link = crate::engine::worker::spawn(Arc::new(move || ctx.request_repaint()));
            let mut app = SpillwayApp::new(link, &config, data_dir, config_dir);
            let model = model.or_else(|| app.settings.last_model.clone());
            if let Some(path) = model {
                app.load_model(path);
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| UiError::Window(e.to_string()))
}
