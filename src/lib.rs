//! Spillway: local chat with quantized language models whose every layer is
//! placed in VRAM, RAM or on disk. See `docs/ARCHITECTURE.md` for the map.

pub mod chat;
pub mod cli;
pub mod config;
pub mod engine;
pub mod fuzz;
pub mod kernels;
pub mod library;
pub mod model;
pub mod placement;
pub mod protocol;
pub mod remote;
pub mod serve;
pub mod telemetry;
pub mod ui;
pub mod vision;
pub mod weights;
