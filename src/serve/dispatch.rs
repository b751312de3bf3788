//! Between the HTTP handlers and the engine worker: each API request gets
//! an id from the shared counter, goes into the worker's one ordered queue
//! (the same queue the window's own replies use), and receives its events
//! through its own channel. Events that are not a request's (the model
//! loaded, telemetry, a new placement) update the status the
//! `/v1/spillway/status` route shows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::engine::worker::Submitter;
use crate::protocol::{Command, Event, ModelInfo, ReplyRequest, ReqId};
use crate::telemetry::Snapshot;

/// What the API knows of the engine, from its events.
#[derive(Debug, Clone, Default)]
pub struct EngineStatus {
    pub model: Option<ModelInfo>,
    pub telemetry: Option<Snapshot>,
    /// Set when the worker stopped (it crashed, or was shut down).
    pub stopped: Option<String>,
}

struct Inner {
    routes: HashMap<ReqId, mpsc::UnboundedSender<Event>>,
    status: EngineStatus,
    /// The request the engine is computing (the oldest started one).
    running: Option<ReqId>,
}

/// The API's side of the engine; shared by every handler.
pub struct Dispatch {
    submit: Submitter,
    inner: Mutex<Inner>,
    /// Requests waiting or running, at most `queue_limit`.
    in_flight: AtomicUsize,
    queue_limit: usize,
    served: AtomicU64,
    started: Instant,
}

/// The queue is full: the client should retry later (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub limit: usize,
}

impl Dispatch {
    pub fn new(submit: Submitter, queue_limit: usize) -> Arc<Self> {
        Arc::new(Dispatch {
            submit,
            inner: Mutex::new(Inner {
                routes: HashMap::new(),
                status: EngineStatus::default(),
                running: None,
            }),
            in_flight: AtomicUsize::new(0),
            queue_limit: queue_limit.max(1),
            served: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> EngineStatus {
        self.lock().status.clone()
    }

    /// Whether the engine is computing an API request now.
    pub fn running(&self) -> bool {
        self.lock().running.is_some()
    }

    /// Requests waiting or running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn queue_limit(&self) -> usize {
        self.queue_limit
    }

    /// Requests answered since the server started.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    pub fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Takes one event of the worker. A request's own event goes to it and
    /// `true` comes back (the window leaves it alone); any other event
    /// updates the status and `false` comes back (the window applies it
    /// too).
    pub fn route(&self, e: &Event) -> bool {
        let mut inner = self.lock();
        let id = match e {
            Event::Started { req_id, .. } => {
                if inner.routes.contains_key(req_id) {
                    inner.running = Some(*req_id);
                }
                Some(*req_id)
            }
            Event::Token { req_id, .. }
            | Event::PromptProgress { req_id, .. }
            | Event::ReplyFailed { req_id, .. } => Some(*req_id),
            Event::Finished { req_id, .. } => {
                if inner.running == Some(*req_id) {
                    inner.running = None;
                }
                Some(*req_id)
            }
            Event::Loaded(info) => {
                inner.status.model = Some(info.clone());
                inner.status.stopped = None;
                None
            }
            Event::Unloaded => {
                inner.status.model = None;
                None
            }
            Event::Placed(p) => {
                if let Some(m) = &mut inner.status.model {
                    m.placement = p.clone();
                }
                None
            }
            Event::Speculation(s) => {
                if let Some(m) = &mut inner.status.model {
                    m.speculation = s.clone().map(Box::new);
                }
                None
            }
            Event::Telemetry(s) => {
                inner.status.telemetry = Some((**s).clone());
                None
            }
            Event::Stopped { error } => {
                inner.status.stopped = Some(
                    error
                        .clone()
                        .unwrap_or_else(|| "the engine has stopped".into()),
                );
                inner.status.model = None;
                // Every request waiting hears of it: none will be answered.
                for tx in inner.routes.values() {
                    let _ = tx.send(e.clone());
                }
                None
            }
            Event::LoadProgress(_)
            | Event::LoadFailed(_)
            | Event::Preview(_)
            | Event::Notice(_) => None,
        };
        match id.and_then(|id| inner.routes.get(&id)) {
            Some(tx) => {
                let _ = tx.send(e.clone());
                true
            }
            None => false,
        }
    }

    /// Queues `req` (its `req_id` is set here); its events arrive through
    /// the ticket. Refused when the queue is full.
    pub fn submit(self: &Arc<Self>, mut req: ReplyRequest) -> Result<Ticket, QueueFull> {
        // Reserve a place first, so concurrent submits cannot overshoot.
        let reserved = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.queue_limit).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(QueueFull {
                limit: self.queue_limit,
            });
        }
        let id = self.submit.next_id();
        req.req_id = id;
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().routes.insert(id, tx);
        let ticket = Ticket {
            id,
            events: rx,
            dispatch: self.clone(),
            finished: false,
        };
        if !self.submit.send(Command::Generate(req)) {
            let inner = self.lock();
            if let Some(tx) = inner.routes.get(&id) {
                let _ = tx.send(Event::Stopped {
                    error: Some("the engine is not running".into()),
                });
            }
        }
        Ok(ticket)
    }
}

/// One queued request: its events, in order. Dropping it before the reply
/// finished (the client went away) stops the reply at its next token, or
/// before it starts if it is still waiting, and frees its place.
pub struct Ticket {
    pub id: ReqId,
    events: mpsc::UnboundedReceiver<Event>,
    dispatch: Arc<Dispatch>,
    finished: bool,
}

impl Ticket {
    /// The next event of this request; `None` only if the engine is gone.
    pub async fn next(&mut self) -> Option<Event> {
        let e = self.events.recv().await?;
        self.saw(&e);
        Some(e)
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Result<Event, mpsc::error::TryRecvError> {
        let e = self.events.try_recv()?;
        self.saw(&e);
        Ok(e)
    }

    fn saw(&mut self, e: &Event) {
        if matches!(e, Event::Finished { .. } | Event::Stopped { .. }) {
            self.finished = true;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            self.dispatch.submit.stop(self.id);
        } else {
            self.dispatch.served.fetch_add(1, Ordering::SeqCst);
        }
        self.dispatch.lock().routes.remove(&self.id);
        self.dispatch.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::worker;
    use crate::model::sampler::SamplingParams;
    use crate::protocol::{Finish, ReplyStats};

    fn request() -> ReplyRequest {
        ReplyRequest {
            req_id: 0,
            messages: Vec::new(),
            max_tokens: 1,
            sampling: SamplingParams::greedy(),
            think: false,
            max_pixels: None,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }

    #[test]
    fn the_queue_is_bounded_and_a_dropped_request_is_stopped() {
        let (link, ends) = worker::channel();
        let d = Dispatch::new(link.submit.clone(), 2);
        let a = d.submit(request()).unwrap();
        let b = d.submit(request()).unwrap();
        assert_eq!(d.submit(request()).err(), Some(QueueFull { limit: 2 }));
        assert_eq!(d.in_flight(), 2);
        // Ids are the link's, in order, and reach the worker's queue.
        let ids: Vec<ReqId> = ends
            .commands
            .try_iter()
            .map(|c| match c {
                Command::Generate(r) => r.req_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [a.id, b.id]);
        // The client of `b` went away: only `b` is stopped, its place freed.
        let b_id = b.id;
        drop(b);
        assert!(ends.stopped.is_stopped(b_id));
        assert!(!ends.stopped.is_stopped(a.id));
        assert_eq!(d.in_flight(), 1);
        let c = d.submit(request()).unwrap();
        assert_ne!(c.id, b_id);
    }

    #[test]
    fn events_reach_their_request_and_the_rest_reach_the_status() {
        let (link, _ends) = worker::channel();
        let d = Dispatch::new(link.submit.clone(), 4);
        let mut t = d.submit(request()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let token = Event::Token {
            req_id: t.id,
            text: "hi".into(),
        };
        assert!(d.route(&token));
        // The window's own reply is not the API's.
        assert!(!d.route(&Event::Token {
            req_id: t.id + 100,
            text: "x".into()
        }));
        assert!(!d.route(&Event::Telemetry(Box::default())));
        assert!(d.status().telemetry.is_some());
        assert_eq!(rt.block_on(t.next()), Some(token));
        let done = Event::Finished {
            req_id: t.id,
            finish: Finish::EndOfTurn,
            stats: ReplyStats::default(),
        };
        assert!(d.route(&done));
        assert_eq!(rt.block_on(t.next()), Some(done));
        let id = t.id;
        drop(t);
        // Finished: not stopped, counted as served.
        assert!(!link.submit.stopped.is_stopped(id));
        assert_eq!((d.in_flight(), d.served()), (0, 1));
    }
}
