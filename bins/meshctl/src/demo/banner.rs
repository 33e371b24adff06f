//! The banner the demo prints once its proxies are ready: what runs where, and how to try it.

use std::io::Write;
use std::path::Path;

use mesh_dataplane::config::MeshState;

use super::proxies::Node;
use super::workloads::client_plan;
use crate::out::say;

/// Prints what runs where and how to try it.
pub(super) fn print_banner(state: &MeshState, ca_dir: &Path, config: &Path, nodes: &[Node]) {
    say!("");
    say!(
        "== local mesh is up: trust domain {}, CA {}, config {}",
        state.trust_domain,
        ca_dir.display(),
        config.display()
    );
    proxies(state, nodes);
    services(state);
    try_it(state);
    say!("== Ctrl-C stops everything.");
    say!("");
}

/// A line per node's proxy (with its workloads), then per waypoint.
fn proxies(state: &MeshState, nodes: &[Node]) {
    for n in nodes {
        let Some(node) = state.node(&n.name) else {
            continue;
        };
        say!(
            "   node {} ({}): ztunnel pid {}, SOCKS5 {}:15080{}",
            node.name,
            node.address,
            n.child.id().unwrap_or(0),
            node.address,
            if node.service_listeners {
                ", binds the service VIPs"
            } else {
                ""
            }
        );
        for w in &node.workloads {
            say!(
                "     workload {} at {} as {} (HBONE {}:{})",
                w.key(),
                w.address,
                w.identity,
                w.address,
                node.hbone_port
            );
        }
    }
    for n in nodes.iter().filter(|n| n.role == "waypoint") {
        if let Some(wp) = state.waypoints.get(&n.name) {
            say!(
                "   waypoint {} at {} as {} (pid {}): L7 routing for the services that use it",
                wp.key(),
                wp.hbone_addr(),
                wp.identity,
                n.child.id().unwrap_or(0)
            );
        }
    }
}

/// A line per service VIP and port, with its endpoints.
fn services(state: &MeshState) {
    for sp in &state.service_ports {
        let eps: Vec<String> = sp
            .endpoints
            .iter()
            .map(|e| format!("{} {}:{}", e.workload.key(), e.workload.address, e.port))
            .collect();
        for vip in &sp.service.vips {
            say!(
                "   service {}/{} {} VIP {}:{} -> {}",
                sp.service.namespace,
                sp.service.name,
                sp.service.hosts.join(","),
                vip,
                sp.port,
                eps.join(", ")
            );
        }
    }
}

/// How to send traffic through the mesh and look inside a ztunnel.
fn try_it(state: &MeshState) {
    if let Some((src, vip, host)) = client_plan(state) {
        let port = vip.port();
        let socks = state
            .workload_by_ip(src)
            .and_then(|w| w.node.as_deref())
            .and_then(|n| state.node(n))
            .map(|n| n.address.to_string())
            .unwrap_or_default();
        say!("");
        say!("== send your own traffic through the mesh (your shell is workload {src}):");
        say!("   curl http://{vip}/hello");
        say!("   curl --socks5-hostname {socks}:15080 http://{host}:{port}/hello");
        say!(
            "   the ztunnel access logs below (JSON) show each connection with both SPIFFE identities."
        );
        say!("== look inside a running ztunnel:");
        say!("   curl http://{socks}:15020/metrics            # Istio metrics");
        say!(
            "   curl http://{socks}:15000/config_dump        # workloads, services, policies, certificates"
        );
        say!("   meshctl proxy-config {socks}:15000           # the same as tables");
    }
}
