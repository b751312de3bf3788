//! Readings of the machine and the process: resident memory now and at its
//! peak, GPU memory (NVML), RAM, disk (`machine`), and the snapshot the
//! engine sends a few times a second (`snapshot`). Every reading may be
//! unavailable; none may fail.

pub mod machine;
pub mod snapshot;

pub use snapshot::{Sink, Snapshot};

/// Whether process `pid` is running (this process counts as running): its
/// temporary files are its own, not leftovers to clean.
pub fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Resident-set readings of this process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RssBytes {
    pub current: u64,
    pub peak: u64,
}

/// Reads this process's resident set from `/proc/self/status` (Linux).
/// `None` where the platform has no such file.
pub fn rss() -> Option<RssBytes> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some(RssBytes {
        current: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// Resets the peak to the current resident set, so that a later [`rss`]
/// reports the peak of what follows. Linux only; a no-op elsewhere.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    #[test]
    fn rss_reads_on_linux() {
        if cfg!(target_os = "linux") {
            let r = super::rss().unwrap();
            assert!(r.current > 0 && r.peak >= r.current);
        }
    }
}
