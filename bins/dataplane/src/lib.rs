//! The shared data-plane core.
pub mod config;
