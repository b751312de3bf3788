//! Fuzzing the readers of everything a file or a user can hand Spillway:
//! GGUF headers, metadata and tensor tables (and a whole load of the model
//! they describe), safetensors headers with their config.json, tokenizers
//! built from GGUF metadata, chat templates, images with their processor
//! config, history files and settings/config YAML.
//!
//! On stable Rust, without compiler instrumentation: a mutation loop over
//! structured inputs (GGUF metadata and tensor tables are mutated as
//! structures, text formats token by token, binary formats byte by byte),
//! guided by a cheap signal of how far each input got: the target reports
//! the stage it reached and the shape of the error that stopped it, and an
//! input that produces a new (stage, error) pair joins the corpus. Every run
//! is reproducible from its seed.
//!
//! Each input runs in a child process (`spillway fuzz --child TARGET`) under
//! an address-space limit (4 GiB), so an abort, a signal, a panic, an
//! allocation failure or a hang (a timeout) is seen and counted, and the
//! input that caused it is saved for a regression test.

pub mod mutate;
pub mod targets;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub use targets::Target;

/// SplitMix64: small, fast, and the same sequence on every platform and
/// version (reproducibility from a seed is the point).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The address space a child may use.
pub const CHILD_MEMORY_LIMIT: u64 = 4 << 30;
/// How long one input may take before it counts as a hang.
pub const INPUT_TIMEOUT: Duration = Duration::from_secs(20);

/// How an input ended when it did not end well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Crash {
    /// The child exited (a panic exits with 101) or was killed by a signal
    /// (an abort is SIGABRT).
    Died {
        status: String,
        stderr: String,
    },
    Timeout,
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Crash::Died { status, stderr } => {
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
                write!(f, "{status}: {}", last.unwrap_or("(no message)"))
            }
            Crash::Timeout => write!(f, "no answer within {} s", INPUT_TIMEOUT.as_secs()),
        }
    }
}

/// A child process running one target, fed inputs one at a time.
struct Runner {
    exe: PathBuf,
    target: Target,
    child: Option<(Child, ChildStdin, crossbeam_channel::Receiver<Option<u64>>)>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Runner {
    fn new(exe: &Path, target: Target) -> Self {
        Runner {
            exe: exe.to_path_buf(),
            target,
            child: None,
            stderr: Default::default(),
        }
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(&self.exe)
            .args(["fuzz", "--child", self.target.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            let mut sig = [0u8; 8];
            while stdout.read_exact(&mut sig).is_ok() {
                if tx.send(Some(u64::from_le_bytes(sig))).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        let sink = self.stderr.clone();
        sink.lock().map(|mut b| b.clear()).ok();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = sink.lock() {
                    b.extend_from_slice(&buf[..n]);
                    let excess = b.len().saturating_sub(16 << 10);
                    b.drain(..excess);
                }
            }
        });
        self.child = Some((child, stdin, rx));
        Ok(())
    }

    /// Runs one input: the signature of how far it got, or how it crashed.
    fn run(&mut self, input: &[u8]) -> anyhow::Result<Result<u64, Crash>> {
        if self.child.is_none() {
            self.start()?;
        }
        let (child, stdin, rx) = self.child.as_mut().expect("started");
        let sent = stdin
            .write_all(&(input.len() as u64).to_le_bytes())
            .and_then(|()| stdin.write_all(input))
            .and_then(|()| stdin.flush());
        let answer = match sent {
            Ok(()) => rx.recv_timeout(INPUT_TIMEOUT),
            Err(_) => Ok(None),
        };
        match answer {
            Ok(Some(sig)) => Ok(Ok(sig)),
            Ok(None) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                // Let the stderr reader drain what the child said last.
                std::thread::sleep(Duration::from_millis(50));
                let stderr = self
                    .stderr
                    .lock()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                self.child = None;
                Ok(Err(Crash::Died {
                    status: describe(status),
                    stderr,
                }))
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                Ok(Err(Crash::Timeout))
            }
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some((mut child, stdin, _)) = self.child.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(101), _) => "panicked (exit 101)".into(),
        (Some(c), _) => format!("exited with {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// What one target's run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub target: &'static str,
    pub seed: u64,
    pub inputs: u64,
    /// Distinct (stage, error) signatures seen: a rough measure of what the
    /// inputs reached.
    pub signatures: usize,
    pub corpus: usize,
    pub crashes: Vec<CrashReport>,
    pub seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CrashReport {
    pub what: String,
    pub saved: Option<PathBuf>,
}

/// Fuzzes `target` for `budget` (or `max_inputs` inputs), saving inputs
/// that crash under `crashes_dir`.
pub fn fuzz(
    exe: &Path,
    target: Target,
    seed: u64,
    budget: Duration,
    max_inputs: u64,
    crashes_dir: Option<&Path>,
) -> anyhow::Result<Report> {
    let start = Instant::now();
    let mut rng = Rng::new(seed ^ (target as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut corpus = targets::seeds(target)?;
    let seeds = corpus.len();
    let mut seen = HashSet::new();
    let mut runner = Runner::new(exe, target);
    let mut report = Report {
        target: target.name(),
        seed,
        inputs: 0,
        signatures: 0,
        corpus: 0,
        crashes: Vec::new(),
        seconds: 0.0,
    };
    // The seeds themselves first, then mutations.
    let mut next_seed = 0;
    while start.elapsed() < budget && report.inputs < max_inputs {
        let input = if next_seed < seeds {
            next_seed += 1;
            corpus[next_seed - 1].clone()
        } else {
            mutate::mutate(target, &corpus, &mut rng)
        };
        report.inputs += 1;
        match runner.run(&input)? {
            Ok(sig) => {
                if seen.insert(sig) && corpus.len() < 512 {
                    corpus.push(input);
                }
            }
            Err(crash) => {
                let saved = match crashes_dir {
                    Some(dir) => Some(save_crash(dir, target, &input)?),
                    None => None,
                };
                report.crashes.push(CrashReport {
                    what: crash.to_string(),
                    saved,
                });
            }
        }
    }
    report.signatures = seen.len();
    report.corpus = corpus.len();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn save_crash(dir: &Path, target: Target, input: &[u8]) -> anyhow::Result<PathBuf> {
    let dir = dir.join(target.name());
    std::fs::create_dir_all(&dir)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(input, &mut h);
    let path = dir.join(format!("crash-{:016x}", std::hash::Hasher::finish(&h)));
    std::fs::write(&path, input)?;
    Ok(path)
}

/// Runs every saved input under `dir/<target>/` through its target in a
/// child process: the regression corpus. Returns each file with how it
/// crashed, if it did.
pub fn replay(exe: &Path, dir: &Path) -> anyhow::Result<Vec<(PathBuf, Option<Crash>)>> {
    let mut out = Vec::new();
    for target in Target::ALL {
        let sub = dir.join(target.name());
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        let mut runner = Runner::new(exe, target);
        for f in files {
            let input = std::fs::read(&f)?;
            let result = runner.run(&input)?;
            out.push((f, result.err()));
        }
    }
    Ok(out)
}

/// The child's side: limits its memory, then runs inputs from stdin until
/// it closes, answering each with its signature on the original stdout.
pub fn child_main(target: Target) -> anyhow::Result<()> {
    // SAFETY: plain libc calls on this process's own resource limits and
    // file descriptors, with valid arguments.
    let ack_fd = unsafe {
        let limit = libc::rlimit {
            rlim_cur: CHILD_MEMORY_LIMIT,
            rlim_max: CHILD_MEMORY_LIMIT,
        };
        if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
            anyhow::bail!("cannot limit the fuzz child's memory");
        }
        // What the targets print must not mix with the answers.
        let ack = libc::dup(1);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if ack < 0 || null < 0 || libc::dup2(null, 1) < 0 {
            anyhow::bail!("cannot set up the fuzz child's output");
        }
        ack
    };
    // SAFETY: `ack_fd` is a fresh descriptor this process owns alone.
    let mut ack = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(ack_fd) };
    let mut stdin = std::io::stdin().lock();
    let scratch = tempfile::tempdir()?;
    loop {
        let mut len = [0u8; 8];
        if stdin.read_exact(&mut len).is_err() {
            return Ok(());
        }
        let len = u64::from_le_bytes(len);
        anyhow::ensure!(len <= 256 << 20, "input of {len} bytes");
        let mut input = vec![0u8; len as usize];
        stdin.read_exact(&mut input)?;
        let sig = targets::run(target, &input, scratch.path()).signature;
        ack.write_all(&sig.to_le_bytes())?;
        ack.flush()?;
    }
}
