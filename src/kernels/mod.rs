//! Spillway's own CPU matmul kernels, behind [`crate::model::linear::Linear`].
//!
//! Today one path serves every GGML type and every batch size: weight rows
//! are dequantized a tile at a time straight from their stored blocks and
//! multiplied in f32 against f32 activations. Keeping activations in f32
//! (rather than quantizing them to 8 bits as llama.cpp does) is more precise;
//! on SmolLM2-135M it is the difference between answering "Paris" and
//! "L'Étoile" to "What is the capital of France?", a choice llama.cpp gets
//! wrong. The CPU-kernels work adds fused SIMD dot products behind this
//! module, measured against this path for accuracy.

pub mod dequant_gemm;
