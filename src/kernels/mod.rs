//! Spillway's own CPU kernels, behind [`crate::model::linear::Linear`].
//!
//! - [`matmul`]: the front door: picks a kernel per weight type and batch
//!   size and splits work over the [`pool`].
//! - [`formats`]: the integer formats in one common group form, the 8-bit
//!   activations, and the scalar reference kernels.
//! - `x86`: AVX2 and AVX-512 VNNI builds of the same generic kernels.
//! - [`ops`]: the rest of the decode step (dots, softmax exp, SiLU, norms).
//! - [`kv`]: the KV cache's storage types and attention reading them in
//!   place.
//! - [`isa`]: runtime CPU feature detection.
//! - [`dequant_gemm`]: the f32 fallback for types without integer kernels.

pub mod dequant_gemm;
pub mod formats;
pub mod isa;
pub mod kv;
pub mod matmul;
pub mod ops;
pub mod pool;
#[cfg(target_arch = "x86_64")]
mod x86;
