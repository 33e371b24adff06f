//! ztunnel: the node-level L4 proxy of ambient mode. Thin: parses flags and runs the core.

use std::process::ExitCode;

use clap::Parser;

/// Node-level L4 proxy: mTLS (HBONE) between workloads on different nodes, with SOCKS5 and
/// service-VIP listeners for local clients.
#[derive(Debug, Parser)]
#[command(name = "ztunnel", version)]
struct Cli {
    #[command(flatten)]
    args: mesh_dataplane::ZtunnelArgs,
}

fn main() -> ExitCode {
    mesh_dataplane::roles::ztunnel::main(Cli::parse().args)
}
