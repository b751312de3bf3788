//! The desktop window (eframe/egui). It never touches a tensor or blocks:
//! it sends [`crate::protocol::Command`]s to the engine worker and drains
//! its events once per frame. One file per panel: `chat` (conversation
//! list, messages, composer), `settings` (model, placement, sampling),
//! `placement` (the layer strip, gauges, speed plot and what-if preview),
//! `images` (attachments, thumbnails, answers drawn over the image),
//! `models` (the welcome screen and model library);
//! `app` holds the state and applies events.

pub mod app;
pub mod chat;
pub mod images;
pub mod keys;
pub mod models;
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

/// egui's fonts plus `assets/icons.ttf` (built by `assets/make-icon-font.py`)
/// as the last fallback: the copy icon of markdown code blocks.
pub fn install_fonts(ctx: &egui::Context) {
    let mut fonts = egui::FontDefinitions::default();
    fonts.font_data.insert(
        "spillway-icons".into(),
        Arc::new(egui::FontData::from_static(include_bytes!(
            "../../assets/icons.ttf"
        ))),
    );
    for family in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        fonts
            .families
            .entry(family)
            .or_default()
            .push("spillway-icons".into());
    }
    ctx.set_fonts(fonts);
}

/// Opens the window (and loads `model` when given); returns when it closes.
/// `config_problem` is shown as a banner (the user's config file could not
/// be read and the defaults are in use).
pub fn run(
    config: Config,
    model: Option<PathBuf>,
    config_problem: Option<String>,
) -> Result<(), UiError> {
    // The log gets NVML's own words; the window says it plainly (with
    // these words in a tooltip).
    if let Some(why) = crate::telemetry::machine::Machine::new().gpu_note() {
        eprintln!("spillway: {why}");
    }
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
            let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || ctx.request_repaint());
            let link = crate::engine::worker::spawn(wake.clone());
            let mut app = SpillwayApp::new(link, &config, data_dir, config_dir);
            app.wake = wake;
            // A relative offload folder (the defaults' `offload`) means the
            // working directory for the command line; a window started by a
            // double-click has no meaningful one, so it goes in the cache.
            if app.settings.offload_folder.is_relative() {
                if let Some(d) = &dirs {
                    app.settings.offload_folder = d.cache_dir().join(&app.settings.offload_folder);
                }
            }
            if let Some(problem) = config_problem {
                app.banners.push(app::Banner::error(
                    "Your config file was not used",
                    &problem,
                    "Fix or delete the file; Spillway reads it at start.",
                ));
            }
            // --model, else the config's model.name, else the last model.
            let model = model
                .or_else(|| config.model.as_ref().map(PathBuf::from))
                .or_else(|| app.settings.last_model.clone());
            if app.settings.engine == "server" && !app.settings.server_model.is_empty() {
                // The chat goes through the server the user chose last.
                app.switch_engine();
            } else if let Some(path) = model {
                app.load_model(path);
            } else if !app.settings.starter_fetched {
                // A first run with no model configured: the starter model,
                // downloaded once, then opened.
                app.start_starter();
            }
            // The welcome screen's verdicts.
            app.read_machine();
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| UiError::Window(e.to_string()))
}
