//! Which instruction set the kernels use, chosen once at start from what the
//! CPU reports, so one binary is fast on every x86-64 machine without
//! `target-cpu=native`.
//!
//! Every kernel has a portable scalar version; SIMD versions exist per
//! [`Isa`]. An ARM port adds a `Neon` variant here and a sibling of
//! `kernels::x86` with the same entry points.

use std::sync::OnceLock;

/// An instruction-set level the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, no intrinsics: the reference every SIMD path is tested
    /// against.
    Scalar,
    /// AVX2 + FMA + F16C (Haswell, Zen and later).
    Avx2,
    /// AVX-512 F/BW/VL with VNNI: the integer dot products use `vpdpbusd`.
    Avx512Vnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run code built for `self`.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every level this CPU supports, slowest first.
    /// `Ok` when this CPU runs `self`'s kernels; every safe entry point
    /// that takes an ISA checks this before running SIMD code.
    pub fn check(self) -> Result<(), UnsupportedIsa> {
        if self.supported() {
            Ok(())
        } else {
            Err(UnsupportedIsa(self.name()))
        }
    }

    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }

    /// The best level this CPU supports.
    pub fn best() -> Isa {
        Isa::available().into_iter().max().unwrap_or(Isa::Scalar)
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx512-vnni" | "avx512vnni" => Some(Isa::Avx512Vnni),
            _ => None,
        }
    }
}

/// A kernel was asked to run with an instruction set this CPU lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this CPU cannot run the {0} kernels")]
pub struct UnsupportedIsa(pub &'static str);

static ACTIVE: OnceLock<Isa> = OnceLock::new();

/// The level the kernels use: the best supported one, or a lower one named
/// by `SPILLWAY_ISA` (`scalar`, `avx2`, `avx512`) for comparisons. A level
/// the CPU lacks is never chosen.
pub fn active() -> Isa {
    *ACTIVE.get_or_init(|| {
        let best = Isa::best();
        match std::env::var("SPILLWAY_ISA")
            .ok()
            .as_deref()
            .and_then(Isa::parse)
        {
            Some(wanted) => wanted.min(best),
            None => best,
        }
    })
}

/// The CPU features the kernels look for that this CPU has (for the About
/// box and bug reports).
pub fn cpu_features() -> Vec<String> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut out = Vec::new();
        macro_rules! probe {
            ($($f:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($f) {
                    out.push($f.to_string());
                })*
            };
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16"
        );
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_is_always_available_and_active_is_supported() {
        assert!(Isa::available().contains(&Isa::Scalar));
        assert!(active().supported());
        assert_eq!(Isa::parse("AVX512"), Some(Isa::Avx512Vnni));
        assert_eq!(Isa::parse("neon"), None);
    }
}
