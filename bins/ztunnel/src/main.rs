//! ztunnel: the node-level L4 proxy of ambient mode. Thin: parses flags and runs the core.
//! Runs as Istio's ztunnel container too: Istio's chart starts it with `proxy ztunnel` and
//! configures it through the environment (`mesh_dataplane::roles::ztunnel_env`).

use std::process::ExitCode;

use clap::Parser;

mesh_dataplane::global_allocator!();

/// Node-level L4 proxy: mTLS (HBONE) between workloads on different nodes, with SOCKS5 and
/// service-VIP listeners for local clients.
#[derive(Debug, Parser)]
#[command(name = "ztunnel", version)]
struct Cli {
    /// Istio's ztunnel command (`proxy`, the default; Istio's chart passes `proxy ztunnel`).
    #[arg(hide = true, value_parser = ["proxy"])]
    command: Option<String>,
    /// Istio's chart's second argument, `ztunnel`.
    #[arg(hide = true, value_parser = ["ztunnel"], requires = "command")]
    kind: Option<String>,
    #[command(flatten)]
    args: mesh_dataplane::ZtunnelArgs,
}

fn main() -> ExitCode {
    mesh_dataplane::roles::ztunnel_env::main(|cli: Cli| cli.args)
}
