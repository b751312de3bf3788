//! Readings of the machine: each GPU's memory (NVML), RAM, and the disk
//! under the offload folder. A missing NVIDIA driver or NVML library is a
//! note in the reading ("no NVIDIA GPU: …"), never an error.

use std::path::Path;

use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

/// One GPU as NVML sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    pub index: u32,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    /// This process's share of `used_bytes`, where the driver reports it.
    pub process_bytes: Option<u64>,
    /// Peak memory bandwidth from the bus width and memory clock.
    pub bandwidth_bytes_per_sec: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RamReading {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
}

/// Holds the NVML handle (opening it costs tens of milliseconds) and the
/// system reader between readings.
pub struct Machine {
    nvml: Result<Nvml, String>,
    sys: Option<sysinfo::System>,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    pub fn new() -> Self {
        let nvml = Nvml::init()
            .map_err(|e| format!("no NVIDIA GPU found (NVML: {e}); the GPU budget is zero"));
        Machine {
            nvml,
            sys: sysinfo::System::new().ok(),
        }
    }

    /// The NVIDIA driver's version, where NVML is available.
    pub fn driver_version(&self) -> Option<String> {
        self.nvml.as_ref().ok()?.sys_driver_version().ok()
    }

    /// Why there is no GPU reading, when there is none.
    pub fn gpu_note(&self) -> Option<&str> {
        self.nvml.as_ref().err().map(String::as_str)
    }

    /// Every NVIDIA GPU's memory; empty (see [`Machine::gpu_note`]) where
    /// NVML is unavailable.
    pub fn gpus(&self) -> Vec<GpuReading> {
        let Ok(nvml) = &self.nvml else {
            return Vec::new();
        };
        let pid = std::process::id();
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let d = nvml.device_by_index(index).ok()?;
                let mem = d.memory_info().ok()?;
                let process_bytes = d.running_compute_processes().ok().map(|ps| {
                    ps.iter()
                        .filter(|p| p.pid == pid)
                        .map(|p| match p.used_gpu_memory {
                            UsedGpuMemory::Used(b) => b,
                            UsedGpuMemory::Unavailable => 0,
                        })
                        .sum()
                });
                let bandwidth_bytes_per_sec =
                    match (d.memory_bus_width(), d.max_clock_info(Clock::Memory)) {
                        // Double data rate: two transfers per clock.
                        (Ok(bits), Ok(mhz)) => Some(bits as f64 / 8.0 * mhz as f64 * 1e6 * 2.0),
                        _ => None,
                    };
                Some(GpuReading {
                    index,
                    name: d.name().unwrap_or_else(|_| format!("GPU {index}")),
                    total_bytes: mem.total,
                    free_bytes: mem.free,
                    used_bytes: mem.used,
                    process_bytes,
                    bandwidth_bytes_per_sec,
                })
            })
            .collect()
    }

    /// RAM of the machine; zeros where it cannot be read.
    pub fn ram(&mut self) -> RamReading {
        let Some(sys) = self.sys.as_mut() else {
            return RamReading::default();
        };
        sys.refresh_memory();
        RamReading {
            total_bytes: sys.total_memory(),
            available_bytes: sys.available_memory(),
            used_bytes: sys.used_memory(),
        }
    }
}

/// `path`, or its nearest ancestor that exists (a relative path's last is
/// the working directory): the filesystem a folder not made yet would be on.
pub fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|d| !d.as_os_str().is_empty() && d.exists())
        .unwrap_or(Path::new("."))
}

/// Free bytes for an unprivileged user on the file system holding `path`
/// (or its nearest existing ancestor); `None` where it cannot be read.
pub fn disk_free_bytes(path: &Path) -> Option<u64> {
    let p = nearest_existing(path);
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a writable
        // statvfs the call fills.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Bytes of the files under `dir` (recursively); 0 where it does not exist.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_never_fail() {
        let mut m = Machine::new();
        // No GPU here: a note, no readings; with one, readings.
        assert!(m.gpu_note().is_some() || !m.gpus().is_empty());
        let ram = m.ram();
        assert!(ram.total_bytes > 0 && ram.available_bytes <= ram.total_bytes);
        assert!(disk_free_bytes(Path::new("/definitely/not/here")).is_some());
        // A relative folder that does not exist yet: the working directory.
        assert!(disk_free_bytes(Path::new("not-here-yet/offload")).is_some());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/c"), [0u8; 20]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 120);
    }
}
