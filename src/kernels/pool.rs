//! The compute thread pool: workers that spin briefly between jobs, so a
//! decode step's few hundred small matmuls each cost well under a microsecond
//! of synchronisation, and then sleep, so an idle chat costs no CPU.
//!
//! A job is a closure run by every thread that arrives while it is open (the
//! caller is thread 0 and always runs it); jobs split their work into small
//! tasks taken from an atomic counter ([`Tasks`]), so a job is done once its
//! tasks are, whoever took them. A worker the system has descheduled (a busy
//! desktop: a browser, a build) therefore never holds a job up: when the
//! caller has run out of tasks it closes the job and waits only for the
//! workers inside it, each finishing the one task it holds; a worker that
//! wakes up later finds the job closed and skips it. Nobody spins while a
//! sibling is descheduled: waits spin for a few microseconds, then yield
//! the core. Jobs never nest. Concurrent callers (two engines, parallel
//! tests) take turns.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(500);

/// Spins of a wait before it starts yielding the core.
const SPINS_BEFORE_YIELD: u32 = 256;

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers look for the job when they see it change.
    epoch: AtomicUsize,
    /// The current job: a `*const &Job` on the caller's stack, valid while
    /// `open` is set and until `active` is back to 0.
    job: AtomicPtr<()>,
    /// Whether the current job still takes threads.
    open: AtomicBool,
    /// Workers inside the current job (or looking at it).
    active: AtomicUsize,
    /// Workers the current job admits (fewer while the desktop is busy).
    admit: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// Tests: milliseconds a worker waits before entering a job, as if the
    /// system had descheduled it.
    #[cfg(test)]
    stall_ms: AtomicUsize,
}

pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    turn: Mutex<Backoff>,
    workers: Vec<JoinHandle<()>>,
}

/// Spins briefly, then yields the core, until `done` holds.
#[inline]
fn wait_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl Pool {
    /// A pool of `threads` threads in all: the caller plus `threads - 1`
    /// workers. A worker the system refuses to start leaves a smaller pool,
    /// never a failure.
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            open: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            admit: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            #[cfg(test)]
            stall_ms: AtomicUsize::new(0),
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
            turn: Mutex::new(Backoff::new(workers.len())),
            workers,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(thread_index)` on the caller and on every worker that joins
    /// before the caller's own run of it returns, and returns when every
    /// thread that joined has finished. `f` must split its work with a
    /// shared counter ([`Tasks`]): any number of threads, even the caller
    /// alone, must complete it.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if self.threads == 1 {
            f(0);
            return;
        }
        let mut turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let admit = turn.admit();
        if admit == 0 {
            return f(0);
        }
        // SAFETY: the lifetime is erased only for the duration of this call;
        // the job is closed and every worker inside it has left before we
        // return.
        let f: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        let slot: &&'static Job = &f;
        s.job
            .store(slot as *const &Job as *mut (), Ordering::SeqCst);
        s.admit.store(admit, Ordering::SeqCst);
        s.open.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let started = Instant::now();
        let caller = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        // Every task is taken: late workers may skip the job.
        s.open.store(false, Ordering::SeqCst);
        let own = started.elapsed();
        if s.active.load(Ordering::SeqCst) != 0 {
            wait_until(|| s.active.load(Ordering::SeqCst) == 0);
            turn.waited(own, started.elapsed() - own);
        } else {
            turn.waited(own, Duration::ZERO);
        }
        s.job.store(std::ptr::null_mut(), Ordering::SeqCst);
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
        // Wait for the next job: spin (yielding the core when someone else
        // wants it), then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            if start.elapsed() < SPIN {
                std::thread::yield_now();
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
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        #[cfg(test)]
        {
            let ms = s.stall_ms.load(Ordering::SeqCst);
            if ms > 0 {
                std::thread::sleep(Duration::from_millis(ms as u64));
            }
        }
        // Enter before looking: the caller waits for `active` only after
        // closing the job, so a worker that sees it open may use it.
        let ahead = s.active.fetch_add(1, Ordering::SeqCst);
        seen = s.epoch.load(Ordering::SeqCst);
        if s.open.load(Ordering::SeqCst) && ahead < s.admit.load(Ordering::SeqCst) {
            let job = s.job.load(Ordering::SeqCst) as *const &Job;
            if !job.is_null() {
                // SAFETY: the job is open and we are counted in `active`,
                // so the caller is still inside `run` and its slot is live.
                let f = unsafe { *job };
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(id))).is_err() {
                    s.panicked.store(true, Ordering::SeqCst);
                }
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many workers a job admits. A job whose caller, out of tasks, waits
/// for workers longer than it worked itself (and longer than a woken
/// worker's start) had a worker descheduled in the middle of a task; two
/// such jobs close together mean the desktop is busy. The next jobs then
/// admit half as many workers, for a
/// stretch that doubles while it keeps happening (64 jobs, a fraction of a
/// token, up to 16,384, a second or so of decoding), and then probe the
/// full pool again; a long run of clean jobs resets the stretch. The
/// threads left make full use of the cores the desktop leaves.
#[derive(Debug)]
struct Backoff {
    workers: usize,
    /// Workers admitted for the next `left` jobs.
    reduced: usize,
    left: usize,
    /// The next stretch after another contended job.
    stretch: usize,
    /// Clean jobs at full admission since the last contended one.
    clean: usize,
    /// Jobs since the last contended one (a lone one — a virtual machine's
    /// host taking a core for a moment — is not a busy desktop).
    since: usize,
}

impl Backoff {
    const FIRST: usize = 64;
    const LONGEST: usize = 16_384;
    /// Clean jobs after which the stretch starts again from `FIRST`.
    const FORGET: usize = 8_192;
    /// A contended job backs off only this soon after another.
    const AGAIN: usize = 256;
    /// Waits shorter than this are never contention (a woken worker's
    /// first task, a cache miss).
    const NOISE: Duration = Duration::from_micros(300);

    fn new(workers: usize) -> Self {
        Backoff {
            workers,
            reduced: workers,
            left: 0,
            stretch: Self::FIRST,
            clean: 0,
            since: usize::MAX,
        }
    }

    fn admit(&mut self) -> usize {
        if self.left == 0 {
            return self.workers;
        }
        self.left -= 1;
        self.reduced
    }

    /// Records a job: the caller's own time in it and its wait for workers
    /// after that.
    fn waited(&mut self, own: Duration, wait: Duration) {
        self.since = self.since.saturating_add(1);
        if wait > (2 * own).max(Self::NOISE) {
            let lone = self.since > Self::AGAIN;
            self.since = 0;
            if lone && self.left == 0 {
                return;
            }
            let from = if self.left > 0 {
                self.reduced
            } else {
                self.workers
            };
            self.reduced = from / 2;
            self.left = self.stretch;
            self.stretch = (self.stretch * 2).min(Self::LONGEST);
            self.clean = 0;
        } else if self.left == 0 {
            self.clean += 1;
            if self.clean >= Self::FORGET {
                self.stretch = Self::FIRST;
                self.clean = 0;
            }
        }
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

/// Compute threads when the user sets none: every core this process may
/// use (the standard library counts its CPU affinity mask and cgroup CPU
/// quota, so `taskset` and container limits are honoured) on small
/// machines, one left for the UI and the desktop from six cores up.
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
        // Twenty 5 ms tasks: the sleeping worker wakes and takes some.
        let tasks = Tasks::new(20);
        let by_worker = AtomicUsize::new(0);
        pool.run(&|t| {
            while tasks.next().is_some() {
                std::thread::sleep(Duration::from_millis(5));
                if t == 1 {
                    by_worker.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        assert!(
            by_worker.load(Ordering::Relaxed) > 0,
            "the worker never woke"
        );
        let tasks = Tasks::new(64);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|_| {
                while let Some(i) = tasks.next() {
                    if i == 40 {
                        panic!("boom")
                    }
                }
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let tasks = Tasks::new(10);
        let ran = AtomicUsize::new(0);
        pool.run(&|_| {
            while tasks.next().is_some() {
                ran.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert_eq!(ran.load(Ordering::Relaxed), 10);
    }

    /// A worker that is descheduled when a job is posted (here: held off
    /// for 300 ms) does not hold the job up: the caller does every task and
    /// returns; the late worker skips the closed job.
    #[test]
    fn a_descheduled_worker_does_not_hold_a_job_up() {
        let pool = Pool::new(2);
        pool.shared.stall_ms.store(300, Ordering::SeqCst);
        // Let the worker reach its stall point, then post jobs.
        let start = Instant::now();
        for _ in 0..20 {
            let tasks = Tasks::new(8);
            let ran = AtomicUsize::new(0);
            pool.run(&|_| {
                while tasks.next().is_some() {
                    ran.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert_eq!(ran.load(Ordering::Relaxed), 8);
        }
        assert!(
            start.elapsed() < Duration::from_millis(250),
            "jobs waited for the stalled worker: {:?}",
            start.elapsed()
        );
        pool.shared.stall_ms.store(0, Ordering::SeqCst);
    }

    /// A lone slow job (a host taking a core for a moment) changes
    /// nothing; two close together halve the workers for a stretch that
    /// doubles while it recurs, then the full pool is probed again.
    #[test]
    fn backoff_needs_two_contended_jobs_close_together() {
        let (fast, slow) = (Duration::from_micros(50), Duration::from_millis(3));
        let mut b = Backoff::new(3);
        b.waited(fast, slow);
        assert_eq!(b.admit(), 3);
        for _ in 0..300 {
            b.waited(fast, Duration::ZERO);
        }
        b.waited(fast, slow);
        assert_eq!(b.admit(), 3, "300 jobs apart: still lone");
        b.waited(fast, slow);
        let admitted: Vec<usize> = (0..Backoff::FIRST).map(|_| b.admit()).collect();
        assert!(admitted.iter().all(|&a| a == 1), "{admitted:?}");
        assert_eq!(b.admit(), 3, "the full pool is probed after the stretch");
        b.waited(fast, slow);
        assert_eq!(b.stretch, 4 * Backoff::FIRST);
    }
}
