//! The compute thread pool: workers that spin briefly between jobs, so a
//! decode step's few hundred small matmuls each cost well under a microsecond
//! of synchronisation, and then sleep, so an idle chat costs no CPU.
//!
//! A job is a closure run once on every thread (the caller is thread 0);
//! jobs split their work with an atomic counter ([`Tasks`]). Jobs never
//! nest. Concurrent callers (two engines, parallel tests) take turns.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(500);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers run the job when they see it change.
    epoch: AtomicUsize,
    /// The current job, valid while `pending > 0`.
    job: UnsafeCell<Option<*const Job>>,
    /// Workers yet to finish the current job.
    pending: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread holding `Pool::turn` while no
// worker reads it (pending == 0), and read by workers only between the epoch
// bump and their decrement of `pending`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    turn: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `threads` threads in all: the caller plus `threads - 1`
    /// workers. A worker the system refuses to start leaves a smaller pool,
    /// never a failure.
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers: Vec<_> = (1..threads.max(1))
            .map_while(|id| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("spillway-compute-{id}"))
                    .spawn(move || worker(&s, id))
                    .ok()
            })
            .collect();
        Pool {
            threads: workers.len() + 1,
            shared,
            turn: Mutex::new(()),
            workers,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(thread_index)` on every thread of the pool and returns when
    /// all have finished.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if self.threads == 1 {
            f(0);
            return;
        }
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the lifetime is erased only for the duration of this call;
        // we wait below until every worker is done with the pointer.
        let ptr: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        // SAFETY: no worker reads `job` while pending == 0 (see `Shared`).
        unsafe { *s.job.get() = Some(ptr) };
        s.pending.store(self.threads - 1, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let caller = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: every worker has finished with the job.
        unsafe { *s.job.get() = None };
        if let Err(p) = caller {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a compute thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(s: &Shared, id: usize) {
    lower_priority();
    // The epoch the pool was created with (not a fresh load: a job may have
    // been posted before this thread got to run).
    let mut seen = 0;
    loop {
        // Wait for the next job: spin, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            while s.epoch.load(Ordering::SeqCst) == seen {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            break;
        }
        seen = s.epoch.load(Ordering::Acquire);
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the job pointer is valid until we decrement `pending`.
        if let Some(job) = unsafe { *s.job.get() } {
            let f = unsafe { &*job };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(id))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Compute workers yield to the UI and the rest of the desktop when the CPU
/// is contended (nice +5 on Linux); they still get every idle core.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on this thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, 5);
    }
}

/// Hands out task indices `0..count` to whichever thread asks first.
pub struct Tasks {
    next: AtomicUsize,
    count: usize,
}

impl Tasks {
    pub fn new(count: usize) -> Tasks {
        Tasks {
            next: AtomicUsize::new(0),
            count,
        }
    }

    pub fn next(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.count).then_some(i)
    }
}

static GLOBAL: OnceLock<Mutex<Arc<Pool>>> = OnceLock::new();

fn global_slot() -> &'static Mutex<Arc<Pool>> {
    GLOBAL.get_or_init(|| Mutex::new(Arc::new(Pool::new(default_threads()))))
}

/// Compute threads when the user sets none: every core on small machines,
/// one left for the UI and the desktop from six cores up.
pub fn default_threads() -> usize {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n >= 6 {
        n - 1
    } else {
        n
    }
}

/// The shared pool the kernels use.
pub fn global() -> Arc<Pool> {
    global_slot()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Resizes the shared pool; jobs already running finish on the old one.
pub fn set_threads(threads: usize) {
    let mut slot = global_slot().lock().unwrap_or_else(|e| e.into_inner());
    if slot.threads() != threads.max(1) {
        *slot = Arc::new(Pool::new(threads));
    }
}

/// Runs `f(thread)` on every thread of the shared pool.
pub fn run(f: &(dyn Fn(usize) + Sync)) {
    global().run(f)
}

/// Threads in the shared pool.
pub fn threads() -> usize {
    global().threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_threads_and_jobs() {
        let pool = Pool::new(3);
        for round in 0..200 {
            let n = 1 + round % 37;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let tasks = Tasks::new(n);
            pool.run(&|_| {
                while let Some(i) = tasks.next() {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn sleeping_workers_wake_and_a_panic_is_reported() {
        let pool = Pool::new(2);
        std::thread::sleep(SPIN * 4);
        let ran = AtomicUsize::new(0);
        pool.run(&|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|t| {
                if t == 1 {
                    panic!("boom")
                }
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        pool.run(&|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 4);
    }
}
