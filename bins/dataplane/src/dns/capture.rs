//! The capture rules that send a workload's DNS to the DNS proxy (`meshctl capture install
//! --dns`): UDP and TCP to port 53 are redirected to the proxy's DNS port, except the proxy's
//! own queries (its socket mark or uid), as istio-cni's in-pod rules do for ztunnel's 15053.
//! They live in a chain of their own (`MESH_DNS`), jumped to from nat `OUTPUT` before the TCP
//! capture (so TCP 53 is not taken to the outbound port).

/// The nat chain of the DNS rules.
pub const CHAIN: &str = "MESH_DNS";

/// The jumps from nat `OUTPUT` to [`CHAIN`] (as `iptables -D OUTPUT` arguments).
pub const JUMPS: [[&str; 6]; 2] = [
    ["-p", "udp", "--dport", "53", "-j", CHAIN],
    ["-p", "tcp", "--dport", "53", "-j", CHAIN],
];

/// The nat rules (iptables-restore lines, inside `*nat`) redirecting port 53 to `port`, except
/// packets with `mark` or from `uid`.
pub fn nat_rules(port: u16, mark: Option<u32>, uid: Option<u32>) -> String {
    let mut r = format!(":{CHAIN} - [0:0]\n");
    for jump in JUMPS {
        r.push_str(&format!("-A OUTPUT {}\n", jump.join(" ")));
    }
    if let Some(m) = mark {
        r.push_str(&format!("-A {CHAIN} -m mark --mark {m} -j RETURN\n"));
    }
    if let Some(u) = uid {
        r.push_str(&format!("-A {CHAIN} -m owner --uid-owner {u} -j RETURN\n"));
    }
    for proto in ["udp", "tcp"] {
        r.push_str(&format!(
            "-A {CHAIN} -p {proto} -j REDIRECT --to-ports {port}\n"
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_rules_skip_the_proxy_then_redirect_both_protocols() {
        let r = nat_rules(15053, Some(1337), Some(7));
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(
            lines,
            [
                ":MESH_DNS - [0:0]",
                "-A OUTPUT -p udp --dport 53 -j MESH_DNS",
                "-A OUTPUT -p tcp --dport 53 -j MESH_DNS",
                "-A MESH_DNS -m mark --mark 1337 -j RETURN",
                "-A MESH_DNS -m owner --uid-owner 7 -j RETURN",
                "-A MESH_DNS -p udp -j REDIRECT --to-ports 15053",
                "-A MESH_DNS -p tcp -j REDIRECT --to-ports 15053",
            ]
        );
    }
}
