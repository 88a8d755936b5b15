//! Test support shared by the integration tests in `tests/`.
