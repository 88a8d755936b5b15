//! weft's integration tests: one binary, one module per topic (ripgrep style).
mod formats;
mod graph;
mod models;
mod text;
mod memory;
mod sampling;
mod pipeline;
