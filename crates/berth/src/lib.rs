//! The `berth` binary's library: the server assembly ([`server`]), its configuration
//! ([`config`]), the CLI client ([`cli`]) and the benchmarks ([`bench`]). `main.rs` only parses
//! arguments and calls in here.

pub mod bench;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod server;
