//! sidecar: the proxy beside one workload (sidecar mode). Thin: parses flags and runs the core.

use std::process::ExitCode;

use clap::Parser;

mesh_dataplane::global_allocator!();

/// Per-workload proxy: HBONE (mTLS) in and out with the workload's identity only, captured
/// outbound (15001) and plaintext inbound (15006) traffic, policies and telemetry. Exits on
/// SIGTERM, SIGINT or `POST /quitquitquit` on the admin port.
#[derive(Debug, Parser)]
#[command(name = "sidecar", version)]
struct Cli {
    #[command(flatten)]
    args: mesh_dataplane::SidecarArgs,
}

fn main() -> ExitCode {
    mesh_dataplane::roles::sidecar::main(Cli::parse().args)
}
