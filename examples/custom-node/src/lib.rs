//! A third-party node crate: see README.md (the node API arrives with the graph engine).
