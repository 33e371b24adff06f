//! waypoint: ambient mode's shared proxy in front of the services and workloads that use it.
//! Thin: parses flags and runs the core.

use std::process::ExitCode;

use clap::Parser;

mesh_dataplane::global_allocator!();

/// Shared waypoint proxy: HBONE in with its own identity, endpoint choice, HBONE out to the
/// endpoint's ztunnel.
#[derive(Debug, Parser)]
#[command(name = "waypoint", version)]
struct Cli {
    #[command(flatten)]
    args: mesh_dataplane::WaypointArgs,
}

fn main() -> ExitCode {
    mesh_dataplane::roles::waypoint::main(Cli::parse().args)
}
