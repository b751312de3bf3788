//! Integration tests, compiled as one binary. They run the real engine on
//! real small models fetched by `tests/fetch-models.sh` (the test command
//! in the README runs it first).

mod common;
mod download;
mod engine;
mod errors;
mod generation;
mod hf;
mod library;
mod placement;
mod reliability;
mod serve;
mod speculative;
mod synth;
mod tokenizer;
mod ui;
mod vision;
