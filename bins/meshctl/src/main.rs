//! meshctl: the mesh's command-line tool: a local demo mesh, the local CA, config validation,
//! and a ztunnel runner.

mod bench;
mod demo;
mod out;
mod proxy_config;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_dataplane::process::parse_duration;
use mesh_identity::{LocalCa, SpiffeId};

use out::{fail, say};

mesh_dataplane::global_allocator!();

#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Service-mesh data plane: local demo, CA and config tools"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a local mesh on loopback: a CA, two ztunnel nodes, an echo service and a client.
    Demo(demo::DemoArgs),
    /// Measure latency, throughput, CPU and memory of each proxy path against direct.
    Bench(bench::BenchArgs),
    /// A plain TCP forwarder used by `bench` as the relay-pair floor (not part of the mesh).
    #[command(hide = true)]
    BenchRelay(bench::RelayArgs),
    /// Local CA operations.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Check a mesh config file; exits non-zero naming file, field and reason of each problem.
    Validate {
        /// The mesh config file.
        file: PathBuf,
    },
    /// Show a running proxy's workloads, services, policies and certificates (from its admin
    /// endpoint's /config_dump).
    ProxyConfig(proxy_config::ProxyConfigArgs),
    /// Run a ztunnel in this process (the same core and flags as the `ztunnel` binary).
    Ztunnel(mesh_dataplane::ZtunnelArgs),
    /// Run a waypoint in this process (the same core and flags as the `waypoint` binary).
    Waypoint(mesh_dataplane::WaypointArgs),
    /// Run a sidecar in this process (the same core and flags as the `sidecar` binary).
    Sidecar(mesh_dataplane::SidecarArgs),
    /// Install or remove the iptables rules that capture a workload's TCP for its sidecar
    /// (Linux, root), in a network namespace or on this host.
    Capture {
        #[command(subcommand)]
        cmd: CaptureCmd,
    },
}

#[derive(Debug, Subcommand)]
enum CaptureCmd {
    /// Redirect outbound TCP to the outbound port and inbound TCP to the plaintext port,
    /// except the proxy's own traffic (socket mark / uid), loopback, HBONE (15008), metrics
    /// (15020), readiness (15021) and the exclusions. Replaces earlier rules.
    Install {
        #[command(flatten)]
        target: CaptureTarget,
        /// The sidecar's captured-outbound port.
        #[arg(long, default_value_t = 15001, value_name = "PORT")]
        outbound_port: u16,
        /// The sidecar's plaintext inbound port.
        #[arg(long, default_value_t = 15006, value_name = "PORT")]
        inbound_port: u16,
        /// Socket mark of the proxy's own connections (the sidecar's `--socket-mark`); 0: none.
        #[arg(long, default_value_t = 1337, value_name = "MARK")]
        mark: u32,
        /// Also exclude connections of processes running as this uid (the proxy's).
        #[arg(long, value_name = "UID")]
        uid: Option<u32>,
        /// Inbound ports not captured (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "PORTS")]
        exclude_inbound_ports: Vec<u16>,
        /// Outbound destination ports not captured (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "PORTS")]
        exclude_outbound_ports: Vec<u16>,
        /// Outbound destination CIDRs not captured (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
        exclude_outbound_cidrs: Vec<ipnet::IpNet>,
        /// Inbound by TPROXY instead of REDIRECT (run the sidecar with `--tproxy`): the app
        /// sees each client's own address. Adds policy routing (fwmark 1338, table 133).
        #[arg(long)]
        tproxy: bool,
        /// Also redirect the workload's DNS (UDP and TCP 53) to the DNS proxy's 15053, as
        /// istio-cni does for ztunnel's DNS capture.
        #[arg(long)]
        dns: bool,
        /// Print the iptables-restore input instead of applying it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the capture rules (nothing else is touched).
    Remove {
        #[command(flatten)]
        target: CaptureTarget,
    },
}

#[derive(Debug, clap::Args)]
struct CaptureTarget {
    /// Network namespace (`ip netns` name); default: the current one (a host or VM).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Also apply the rules to IPv6 (ip6tables).
    #[arg(long)]
    ipv6: bool,
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Create the local CA in DIR (or report the existing one).
    Init {
        /// State directory of the CA.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Issue a workload certificate: writes cert.pem, key.pem (0600) and ca.pem into OUT.
    Issue {
        /// State directory of the CA.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The SPIFFE id, spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
        #[arg(long, value_name = "SPIFFE_ID")]
        id: String,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Certificate lifetime.
        #[arg(long, default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
        ttl: Duration,
    },
}

fn capture(cmd: CaptureCmd) -> ExitCode {
    use mesh_dataplane::capture;
    match cmd {
        CaptureCmd::Install {
            target,
            outbound_port,
            inbound_port,
            mark,
            uid,
            exclude_inbound_ports,
            exclude_outbound_ports,
            exclude_outbound_cidrs,
            tproxy,
            dns,
            dry_run,
        } => {
            let spec = capture::CaptureSpec {
                outbound_port,
                inbound_port,
                exclude_inbound_ports,
                exclude_outbound_ports,
                exclude_outbound_cidrs,
                mark: (mark != 0).then_some(mark),
                uid,
                tproxy,
                dns_port: dns.then_some(mesh_dataplane::dns::DNS_PORT),
            };
            if dry_run {
                say!("{}", capture::rules(&spec, false));
                if target.ipv6 {
                    say!("{}", capture::rules(&spec, true));
                }
                return ExitCode::SUCCESS;
            }
            match capture::install(&spec, target.netns.as_deref(), target.ipv6) {
                Ok(()) => {
                    say!(
                        "capture installed in {}: outbound -> {outbound_port}, inbound -> {inbound_port}",
                        target.netns.as_deref().unwrap_or("this network namespace")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        CaptureCmd::Remove { target } => {
            match capture::remove(target.netns.as_deref(), target.ipv6) {
                Ok(()) => {
                    say!(
                        "capture removed from {}",
                        target.netns.as_deref().unwrap_or("this network namespace")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Ztunnel(args) => mesh_dataplane::roles::ztunnel::main(args),
        Cmd::Waypoint(args) => mesh_dataplane::roles::waypoint::main(args),
        Cmd::Sidecar(args) => mesh_dataplane::roles::sidecar::main(args),
        Cmd::Capture { cmd } => capture(cmd),
        Cmd::Demo(args) => demo::main(args),
        Cmd::Bench(args) => bench::main(args),
        Cmd::BenchRelay(args) => bench::relay_main(args),
        Cmd::ProxyConfig(args) => proxy_config::main(args),
        Cmd::Validate { file } => match mesh_dataplane::config::load_file(&file) {
            Ok(state) => {
                say!(
                    "{}: valid ({} workloads, {} service ports, {} nodes, {} authorization policies, {} peer authentications, trust domain {})",
                    file.display(),
                    state.workloads.len(),
                    state.service_ports.len(),
                    state.nodes.len(),
                    state.policies.len(),
                    state.peer_authn.len(),
                    state.trust_domain
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Cmd::Ca {
            cmd: CaCmd::Init { dir },
        } => match LocalCa::load_or_create(&dir) {
            Ok((_, true)) => {
                say!("created local CA in {}", dir.display());
                ExitCode::SUCCESS
            }
            Ok((_, false)) => {
                say!("local CA already exists in {} (reused)", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Cmd::Ca {
            cmd: CaCmd::Issue { dir, id, out, ttl },
        } => {
            let id: SpiffeId = match id.parse() {
                Ok(id) => id,
                Err(e) => return fail(format!("--id {id:?}: {e}")),
            };
            let result = LocalCa::load(&dir)
                .and_then(|ca| ca.with_ttl(ttl).issue(&id))
                .and_then(|cert| cert.write_pem_files(&out).map(|()| cert));
            match result {
                Ok(cert) => {
                    say!(
                        "issued {} (valid for {ttl:?}): {}/cert.pem, key.pem, ca.pem",
                        cert.identity(),
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}
