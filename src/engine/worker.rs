//! The inference thread behind the window: it owns the [`Engine`] outright,
//! takes [`Command`]s from a channel and answers with [`Event`]s, waking the
//! window after each. Nothing here blocks the caller; a reply is stopped
//! by marking its id in the shared [`StopSet`] (checked between tokens;
//! other requests are untouched) and always ends with `Finished`. A panic inside the engine ends the thread with a
//! `Stopped` event carrying its message, so the window can offer a restart.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{CancelCheck, Engine, EngineError, GenerateParams, LoadOptions, LoadStage};
use crate::model::ModelError;
use crate::placement::store::DiskSource;
use crate::placement::PlacementError;
use crate::protocol::{
    Command, ErrorInfo, ErrorKind, Event, Finish, LoadProgress, LoadRequest, ModelInfo,
    ReplyRequest, ReplyStats, ReqId,
};
use crate::telemetry::Sink;

/// Telemetry snapshots at most this often while generating.
const TELEMETRY_EVERY: Duration = Duration::from_millis(250);

/// Requests (replies or loads) stopped by their id: shared by every end
/// that submits work, so stopping one request never touches another's.
#[derive(Debug, Default)]
pub struct StopSet(Mutex<HashSet<ReqId>>);

impl StopSet {
    pub fn stop(&self, id: ReqId) {
        self.lock().insert(id);
    }

    pub fn is_stopped(&self, id: ReqId) -> bool {
        self.lock().contains(&id)
    }

    /// Forgets `id` once its request has ended.
    pub fn clear(&self, id: ReqId) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<ReqId>> {
        // A panic elsewhere cannot leave a set of ids half-updated.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What may submit work to the worker: its command queue, the stop marks
/// and the id counter. Cheap to clone; the window and the API server each
/// hold one, so their requests share one ordered queue.
#[derive(Clone)]
pub struct Submitter {
    pub commands: Sender<Command>,
    pub stopped: Arc<StopSet>,
    ids: Arc<AtomicU64>,
}

impl Submitter {
    /// Sends `cmd`; false when the worker is gone.
    pub fn send(&self, cmd: Command) -> bool {
        self.commands.send(cmd).is_ok()
    }

    /// Stops reply `req_id` at its next token (or before it starts), or
    /// cancels load `req_id` at the next layer.
    pub fn stop(&self, req_id: ReqId) {
        self.stopped.stop(req_id);
    }

    /// A request id no one else has.
    pub fn next_id(&self) -> ReqId {
        self.ids.fetch_add(1, Ordering::SeqCst)
    }
}

/// The window's end of the worker: send commands, drain events, stop a
/// reply. Built by [`spawn`], or by a test around its own channel ends.
pub struct EngineLink {
    pub submit: Submitter,
    pub events: Receiver<Event>,
}

impl EngineLink {
    /// Sends `cmd`; false when the worker is gone.
    pub fn send(&self, cmd: Command) -> bool {
        self.submit.send(cmd)
    }

    /// Stops reply `req_id` at the next token, or cancels load `req_id` at
    /// the next layer.
    pub fn stop(&self, req_id: ReqId) {
        self.submit.stop(req_id);
    }

    pub fn next_id(&self) -> ReqId {
        self.submit.next_id()
    }
}

/// The worker's ends, for a fake engine in tests: it reads commands and
/// sends events as the real worker would.
pub struct WorkerEnds {
    pub commands: Receiver<Command>,
    pub events: Sender<Event>,
    pub stopped: Arc<StopSet>,
}

/// A link and the worker ends it talks to, not yet attached to a thread.
pub fn channel() -> (EngineLink, WorkerEnds) {
    let (ctx, crx) = crossbeam_channel::unbounded();
    let (etx, erx) = crossbeam_channel::unbounded();
    let stopped = Arc::new(StopSet::default());
    (
        EngineLink {
            submit: Submitter {
                commands: ctx,
                stopped: stopped.clone(),
                ids: Arc::new(AtomicU64::new(1)),
            },
            events: erx,
        },
        WorkerEnds {
            commands: crx,
            events: etx,
            stopped,
        },
    )
}

/// Starts the inference thread; `wake` is called after every event (the
/// window's repaint request).
pub fn spawn(wake: Arc<dyn Fn() + Send + Sync>) -> EngineLink {
    let (link, ends) = channel();
    let spawned = std::thread::Builder::new()
        .name("spillway-engine".into())
        .spawn(move || run(ends, wake));
    if let Err(e) = spawned {
        // The link's event end stays open only through `ends`, which the
        // failed spawn dropped: the window sees the worker as stopped.
        eprintln!("cannot start the engine thread: {e}");
    }
    link
}

/// Starts the inference thread around a model already loaded (`spillway
/// serve`): it sends `Loaded` first, as after a `Load` command.
/// `ends` come from [`channel`], whose link the caller keeps.
pub fn spawn_loaded(
    engine: Engine,
    info: ModelInfo,
    ends: WorkerEnds,
    wake: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("spillway-engine".into())
        .spawn(move || run_with(ends, wake, Some((engine, info))))?;
    Ok(())
}

/// The worker loop; returns when `Shutdown` arrives or the window is gone.
pub fn run(ends: WorkerEnds, wake: Arc<dyn Fn() + Send + Sync>) {
    run_with(ends, wake, None)
}

fn run_with(
    ends: WorkerEnds,
    wake: Arc<dyn Fn() + Send + Sync>,
    loaded: Option<(Engine, ModelInfo)>,
) {
    let events = ends.events.clone();
    let waker = wake.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut worker = Worker {
            engine: None,
            last_good: None,
            ends,
            wake,
        };
        if let Some((engine, info)) = loaded {
            worker.adopt(engine, info);
        }
        worker.serve()
    }));
    let error = outcome.err().map(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".into());
        format!("the engine stopped unexpectedly: {msg}")
    });
    let _ = events.send(Event::Stopped { error });
    waker();
}

struct Worker {
    engine: Option<Engine>,
    /// The last load that succeeded: loaded again when a new one fails, so
    /// a bad file never leaves the user without the model that worked.
    last_good: Option<LoadRequest>,
    ends: WorkerEnds,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Worker {
    fn send(&self, e: Event) {
        let _ = self.ends.events.send(e);
        (self.wake)();
    }

    fn serve(&mut self) {
        while let Ok(cmd) = self.ends.commands.recv() {
            match cmd {
                Command::Load(req) => self.load(&req),
                Command::Unload => {
                    self.engine = None;
                    self.send(Event::Unloaded);
                }
                Command::Generate(req) => self.reply(req),
                Command::Preview(req) => {
                    let r = match self.engine.as_mut() {
                        Some(e) => e.preview(&req).map_err(|e| error_info(&e)),
                        None => Err(no_model()),
                    };
                    self.send(Event::Preview(r));
                }
                Command::Apply(req) => {
                    let r = match self.engine.as_mut() {
                        Some(e) => e.replace(req).cloned().map_err(|e| error_info(&e)),
                        None => Err(no_model()),
                    };
                    match r {
                        Ok(p) => self.send(Event::Placed(p)),
                        Err(e) => self.send(Event::Notice(format!(
                            "The new placement was not applied: {}",
                            e.message
                        ))),
                    }
                    self.notices();
                }
                Command::Speculate(opts) => self.speculate(&opts),
                Command::Shutdown => return,
            }
        }
    }

    fn load(&mut self, req: &LoadRequest) {
        // The old model goes first: two models need not fit together.
        self.engine = None;
        if let Err(info) = self.try_load(req) {
            let cancelled = info.kind == ErrorKind::Cancelled;
            self.send(Event::LoadFailed(info));
            // The model that worked comes back (not after a cancel: the
            // user stopped loading on purpose, perhaps to load another).
            let again = self.last_good.clone().map(|p| LoadRequest {
                req_id: req.req_id,
                ..p
            });
            if let Some(prev) = again.filter(|p| p != req && !cancelled) {
                self.send(Event::Notice(format!(
                    "{} is loaded again.",
                    prev.model_path.display()
                )));
                if let Err(again) = self.try_load(&prev) {
                    self.send(Event::LoadFailed(again));
                }
            }
        }
    }

    fn try_load(&mut self, req: &LoadRequest) -> Result<(), ErrorInfo> {
        if req.copy_disk_layers {
            // Sessions of Spillway processes that are gone.
            let _ = crate::placement::offload::clean_stale(&req.placement.offload_dir);
        }
        if let Some(n) = req.threads {
            crate::kernels::pool::set_threads(n.max(1));
        }
        let stopped = self.ends.stopped.clone();
        let id = req.req_id;
        let opts = LoadOptions {
            cancel: Some(CancelCheck::new(move || stopped.is_stopped(id))),
            model_path: req.model_path.clone(),
            quant: req.quant,
            cache_dir: None,
            hub: Default::default(),
            placement: req.placement.clone(),
            // The offload folder chosen in the settings is the one the disk
            // tier copies into, reads from and cleans.
            disk_source: if req.copy_disk_layers {
                DiskSource::OffloadFolder(req.placement.offload_dir.clone())
            } else {
                DiskSource::ModelFile
            },
            context_length: req.context_length,
            max_image_pixels: req.max_image_pixels,
            kv_types: req.kv_types,
            // One beside the model file is found.
            mmproj: None,
        };
        let events = self.ends.events.clone();
        let wake = self.wake.clone();
        let mut last = Instant::now() - Duration::from_secs(1);
        let mut progress = |stage: LoadStage| {
            let p = match stage {
                LoadStage::Downloading(d) => LoadProgress::Downloading(d),
                LoadStage::Quantizing { done, total } => {
                    if done < total && last.elapsed() < Duration::from_millis(50) {
                        return;
                    }
                    LoadProgress::Quantizing { done, total }
                }
                LoadStage::Reading => LoadProgress::Reading,
                LoadStage::Planned => LoadProgress::Placing,
                LoadStage::Layers { done, total } => {
                    // A few updates a second are enough for a bar.
                    if done < total && last.elapsed() < Duration::from_millis(50) {
                        return;
                    }
                    LoadProgress::Layers { done, total }
                }
            };
            last = Instant::now();
            let _ = events.send(Event::LoadProgress(p));
            wake();
        };
        let loaded = Engine::load(&opts, &mut progress);
        self.ends.stopped.clear(id);
        match loaded {
            Ok(mut engine) => {
                if req.speculative.drafting != super::Drafting::Off {
                    // A drafter that cannot be set up leaves the model
                    // loaded, decoding without one.
                    match engine.set_speculation(&req.speculative, &mut progress) {
                        Ok(notices) => {
                            for n in notices {
                                self.send(Event::Notice(format!("Draft model: {}", n.0)));
                            }
                        }
                        Err(e) => {
                            self.send(Event::Notice(format!("Speculative decoding is off: {e}")))
                        }
                    }
                }
                let info = model_info(&mut engine, &req.model_path);
                self.last_good = Some(req.clone());
                self.adopt(engine, info);
                Ok(())
            }
            Err(e) => {
                let mut info = error_info(&e);
                if matches!(info.kind, ErrorKind::Other | ErrorKind::Invalid) {
                    info.kind = ErrorKind::BadModel;
                }
                Err(info)
            }
        }
    }

    /// Sets up (or turns off) the loaded model's drafter.
    fn speculate(&mut self, opts: &super::SpecOptions) {
        let Some(engine) = self.engine.as_mut() else {
            self.send(Event::Notice(no_model().message));
            return;
        };
        let events = self.ends.events.clone();
        let wake = self.wake.clone();
        let mut progress = |stage: LoadStage| {
            let p = match stage {
                LoadStage::Quantizing { done, total } => LoadProgress::Quantizing { done, total },
                LoadStage::Layers { done, total } => LoadProgress::Layers { done, total },
                _ => LoadProgress::Reading,
            };
            let _ = events.send(Event::LoadProgress(p));
            wake();
        };
        let r = engine.set_speculation(opts, &mut progress);
        let info = engine.speculation();
        match r {
            Ok(notices) => {
                for n in notices {
                    self.send(Event::Notice(format!("Draft model: {}", n.0)));
                }
            }
            Err(e) => self.send(Event::Notice(format!("Speculative decoding is off: {e}"))),
        }
        self.send(Event::Speculation(info));
    }

    /// Makes `engine` the one that answers, telling the window.
    fn adopt(&mut self, mut engine: Engine, info: ModelInfo) {
        let events = self.ends.events.clone();
        let wake = self.wake.clone();
        engine.set_telemetry_sink(Some(Sink::new(
            TELEMETRY_EVERY,
            Box::new(move |s| {
                let _ = events.send(Event::Telemetry(Box::new(s)));
                wake();
            }),
        )));
        let snapshot = engine.telemetry();
        self.engine = Some(engine);
        self.send(Event::Loaded(info));
        self.send(Event::Telemetry(Box::new(snapshot)));
        self.notices();
    }

    fn reply(&mut self, req: ReplyRequest) {
        let id = req.req_id;
        self.answer(req);
        self.ends.stopped.clear(id);
    }

    fn answer(&mut self, req: ReplyRequest) {
        let id = req.req_id;
        let stop_set = self.ends.stopped.clone();
        let stopped = move || stop_set.is_stopped(id);
        let Some(engine) = self.engine.as_mut() else {
            self.send(Event::ReplyFailed {
                req_id: id,
                error: no_model(),
            });
            self.finish(id, Finish::Failed, ReplyStats::default());
            return;
        };
        if stopped() {
            self.finish(id, Finish::Cancelled, ReplyStats::default());
            return;
        }
        let before = engine.placement().clone();
        let suffix = engine.thinking_prompt(req.think);
        let prompt = match image_prompt(engine, &req, suffix) {
            Ok(p) => p,
            Err(e) => {
                self.fail(id, &e);
                return;
            }
        };
        let context = engine.context_length();
        if prompt.tokens.len() >= context {
            self.fail(
                id,
                &EngineError::ContextExceeded {
                    prompt_tokens: prompt.tokens.len(),
                    context,
                },
            );
            return;
        }
        self.send(Event::Started {
            req_id: id,
            prompt_tokens: prompt.tokens.len(),
            opened_thinking: suffix.ends_with("<think>"),
        });
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let params = GenerateParams {
            max_tokens: req.max_tokens,
            sampling: req.sampling.clone(),
            stop: req.stop.clone(),
            ignore_eos: req.ignore_eos,
            speculative: true,
        };
        let cancel = AtomicBool::new(stopped());
        let started = Instant::now();
        let mut first_token: Option<f64> = None;
        let events = self.ends.events.clone();
        let wake = self.wake.clone();
        {
            let (events, wake) = (events.clone(), wake.clone());
            engine.on_prompt_progress(Some(Box::new(move |done, total| {
                let _ = events.send(Event::PromptProgress {
                    req_id: id,
                    done,
                    total,
                });
                wake();
            })));
        }
        let result = engine.generate_prompt(&prompt, &params, &cancel, &mut |text| {
            first_token.get_or_insert_with(|| started.elapsed().as_secs_f64());
            if !text.is_empty() {
                let _ = events.send(Event::Token {
                    req_id: id,
                    text: text.to_string(),
                });
                wake();
            }
            if stopped() {
                cancel.store(true, Ordering::Relaxed);
            }
        });
        engine.on_prompt_progress(None);
        let placed = (engine.placement() != &before).then(|| engine.placement().clone());
        match result {
            Ok(g) => {
                let stats = ReplyStats {
                    time_to_first_token_secs: first_token.unwrap_or(g.prompt_secs + g.decode_secs),
                    prompt_tokens: g.prompt_tokens.len(),
                    reused_tokens: g.reused_tokens,
                    generated_tokens: g.generated_tokens.len(),
                    decode_tokens_per_sec: g.decode_tokens_per_sec(),
                    draft_proposed: g.draft_proposed,
                    draft_accepted: g.draft_accepted,
                };
                let finish = match g.finish {
                    super::FinishReason::EndOfGeneration | super::FinishReason::Stop => {
                        Finish::EndOfTurn
                    }
                    super::FinishReason::Length => Finish::Length,
                    super::FinishReason::ContextFull => Finish::ContextFull,
                    super::FinishReason::Cancelled => Finish::Cancelled,
                };
                if let Some(p) = placed {
                    self.send(Event::Placed(p));
                }
                self.notices();
                self.finish(id, finish, stats);
            }
            Err(e) => {
                if let Some(p) = placed {
                    self.send(Event::Placed(p));
                }
                self.notices();
                self.fail(id, &e);
            }
        }
    }

    fn fail(&self, req_id: ReqId, e: &EngineError) {
        self.send(Event::ReplyFailed {
            req_id,
            error: error_info(e),
        });
        self.finish(req_id, Finish::Failed, ReplyStats::default());
    }

    fn finish(&self, req_id: ReqId, finish: Finish, stats: ReplyStats) {
        self.send(Event::Finished {
            req_id,
            finish,
            stats,
        });
    }

    /// Re-plans and budget notes the engine collected, for the window.
    fn notices(&mut self) {
        let Some(e) = self.engine.as_mut() else {
            return;
        };
        for n in e.take_notices() {
            self.send(Event::Notice(n.0));
        }
    }
}

fn no_model() -> ErrorInfo {
    ErrorInfo::new(ErrorKind::NoModel, "no model is loaded")
}

/// What the window shows of `engine`, loaded from `path`.
pub fn model_info(engine: &mut Engine, path: &std::path::Path) -> ModelInfo {
    let store = engine.store();
    let layer_bytes = (0..store.n_layers())
        .map(|i| store.layer_bytes(i))
        .collect();
    let name = path
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    ModelInfo {
        name,
        path: path.to_path_buf(),
        n_layers: engine.hparams().n_layer,
        context_length: engine.context_length(),
        layer_bytes,
        placement: engine.placement().clone(),
        budget_notes: engine.budgets().notes.clone(),
        gpu_name: engine.budgets().gpu_name.clone(),
        synthetic: engine.is_synthetic(),
        remote: None,
        speculation: engine.speculation().map(Box::new),
        kv_types: engine.kv_types(),
        thinking: engine.supports_thinking(),
        vision: engine.vision().map(|v| {
            Box::new(crate::protocol::VisionInfo {
                processor: v.processor.clone(),
                thinking: engine.supports_thinking(),
                family: crate::vision::tasks::Family::of_arch(
                    engine.gguf.architecture().unwrap_or_default(),
                ),
            })
        }),
    }
}

/// The request's conversation as a prompt, its images read from their
/// paths and prepared for the model.
fn image_prompt(
    engine: &Engine,
    req: &ReplyRequest,
    suffix: &str,
) -> Result<super::vision::Prompt, EngineError> {
    let sources = super::vision::image_sources(&req.messages, std::path::Path::new("/"))
        .map_err(EngineError::Invalid)?;
    let mut images = Vec::with_capacity(sources.len());
    for source in &sources {
        let rgb = source
            .load()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        images.push(engine.prepare_image(&rgb, req.max_pixels)?);
    }
    engine.chat_prompt(&req.messages, images, suffix)
}

/// An engine error as it crosses the channel.
pub fn error_info(e: &EngineError) -> ErrorInfo {
    let kind = match e {
        EngineError::Placement(PlacementError::DoesNotFit { .. }) => ErrorKind::DoesNotFit,
        EngineError::Model(m) if m.is_out_of_memory() => ErrorKind::OutOfMemory,
        EngineError::Model(ModelError::Cancelled) => ErrorKind::Cancelled,
        EngineError::Model(ModelError::ContextFull { .. })
        | EngineError::ContextExceeded { .. } => ErrorKind::ContextFull,
        EngineError::Gguf(_)
        | EngineError::Tokenizer(_)
        | EngineError::Model(ModelError::Format(_) | ModelError::Unsupported { .. }) => {
            ErrorKind::BadModel
        }
        EngineError::Invalid(_) => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    };
    ErrorInfo::new(kind, e.to_string())
}
