//! weft's integration tests: one binary, one module per topic (ripgrep style).
mod formats;
mod graph;
mod layout;
mod memory;
mod models;
mod pipeline;
mod quickstart;
mod sampling;
mod text;
