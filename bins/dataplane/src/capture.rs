//! Transparent capture with iptables (Linux, root): the nat rules that send a workload's TCP
//! through its proxy without the application knowing, in the workload's network namespace
//! (a pod) or on a host/VM.
//!
//! - Outbound: TCP the workload opens is redirected to the proxy's outbound port (15001),
//!   except the proxy's own connections (socket mark 1337, or a uid), loopback, and excluded
//!   ports and CIDRs. The proxy reads the original destination with `SO_ORIGINAL_DST`.
//! - Inbound: TCP arriving for the workload is redirected to the plaintext port (15006),
//!   except HBONE (15008, already mTLS), the proxy's metrics and readiness ports (15020,
//!   15021) and excluded ports.
//!
//! Rules live in two chains of their own (`MESH_OUTPUT`, `MESH_INBOUND`) jumped to from
//! `OUTPUT` and `PREROUTING`, so removing them leaves every other rule alone. They are applied
//! atomically with `iptables-restore --noflush`.

use std::process::{Command, Stdio};

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    /// The proxy's captured-outbound port (Istio's 15001).
    pub outbound_port: u16,
    /// The proxy's plaintext inbound port (Istio's 15006).
    pub inbound_port: u16,
    /// Inbound ports never redirected (HBONE, metrics, readiness are always among them).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never redirected.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination CIDRs never redirected.
    pub exclude_outbound_cidrs: Vec<ipnet::IpNet>,
    /// Socket mark of the proxy's own connections (Istio's 1337).
    pub mark: Option<u32>,
    /// Uid of the proxy process, as an alternative (or addition) to the mark.
    pub uid: Option<u32>,
    /// Inbound by TPROXY instead of REDIRECT (the proxy runs with `--tproxy`): connections
    /// keep their addresses, so the proxy can hand them to the app from the client's own
    /// address ([`TPROXY_MARK`], policy routing table [`TPROXY_TABLE`]).
    pub tproxy: bool,
    /// Also redirect the workload's DNS (UDP and TCP port 53) to this port, the DNS proxy's
    /// (`crate::dns::capture`).
    pub dns_port: Option<u16>,
}

/// Mark of TPROXY'd inbound packets and of the proxy's connections to the app that carry the
/// client's address; such packets are routed locally ([`TPROXY_TABLE`]).
pub const TPROXY_MARK: u32 = 1338;
/// The policy routing table that delivers [`TPROXY_MARK`] packets locally.
pub const TPROXY_TABLE: u32 = 133;

impl Default for CaptureSpec {
    fn default() -> Self {
        CaptureSpec {
            outbound_port: 15001,
            inbound_port: 15006,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            mark: Some(1337),
            uid: None,
            tproxy: false,
            dns_port: None,
        }
    }
}

/// Ports of the proxy that inbound capture always leaves alone: HBONE, metrics, readiness.
pub const ALWAYS_EXCLUDED_INBOUND: [u16; 3] = [15008, 15020, 15021];

const OUT_CHAIN: &str = "MESH_OUTPUT";
const IN_CHAIN: &str = "MESH_INBOUND";
const DIVERT_CHAIN: &str = "MESH_DIVERT";

/// The `iptables-restore --noflush` input for `spec` (IPv4 or IPv6 rules: only the loopback
/// range and CIDRs of that family differ).
pub fn rules(spec: &CaptureSpec, ipv6: bool) -> String {
    let mut inbound: Vec<u16> = ALWAYS_EXCLUDED_INBOUND.to_vec();
    inbound.extend(&spec.exclude_inbound_ports);
    inbound.sort_unstable();
    inbound.dedup();
    let mut r = String::new();
    if spec.tproxy {
        // Inbound in the mangle table: TPROXY to the proxy's port, marked for local delivery;
        // the app's replies to a connection the proxy made from the client's address get the
        // mark back from conntrack, so they return to the proxy.
        let m = TPROXY_MARK;
        r.push_str("*mangle\n");
        r.push_str(&format!(":{IN_CHAIN} - [0:0]\n:{DIVERT_CHAIN} - [0:0]\n"));
        r.push_str(&format!("-A PREROUTING -p tcp -j {IN_CHAIN}\n"));
        r.push_str(&format!(
            "-A OUTPUT -p tcp -m mark --mark {m} -j CONNMARK --save-mark\n"
        ));
        r.push_str(&format!(
            "-A OUTPUT -p tcp -m connmark --mark {m} -j CONNMARK --restore-mark\n"
        ));
        r.push_str(&format!(
            "-A {DIVERT_CHAIN} -j MARK --set-xmark {m}/0xffffffff\n-A {DIVERT_CHAIN} -j ACCEPT\n"
        ));
        // Loopback is local traffic, the proxy's own connections to the app among it.
        r.push_str(&format!("-A {IN_CHAIN} -i lo -j RETURN\n"));
        for p in &inbound {
            r.push_str(&format!("-A {IN_CHAIN} -p tcp --dport {p} -j RETURN\n"));
        }
        r.push_str(&format!(
            "-A {IN_CHAIN} -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j {DIVERT_CHAIN}\n"
        ));
        r.push_str(&format!(
            "-A {IN_CHAIN} -p tcp -j TPROXY --on-port {} --tproxy-mark {m}/0xffffffff\n",
            spec.inbound_port
        ));
        r.push_str("COMMIT\n");
    }
    r.push_str("*nat\n");
    r.push_str(&format!(":{OUT_CHAIN} - [0:0]\n"));
    if !spec.tproxy {
        r.push_str(&format!(":{IN_CHAIN} - [0:0]\n"));
        r.push_str(&format!("-A PREROUTING -p tcp -j {IN_CHAIN}\n"));
    }
    if let Some(port) = spec.dns_port {
        // Before the TCP capture: TCP 53 goes to the DNS proxy, not the outbound port.
        r.push_str(&crate::dns::capture::nat_rules(port, spec.mark, spec.uid));
    }
    r.push_str(&format!("-A OUTPUT -p tcp -j {OUT_CHAIN}\n"));
    if !spec.tproxy {
        for p in &inbound {
            r.push_str(&format!("-A {IN_CHAIN} -p tcp --dport {p} -j RETURN\n"));
        }
        r.push_str(&format!(
            "-A {IN_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
            spec.inbound_port
        ));
    }
    if let Some(m) = spec.mark {
        r.push_str(&format!("-A {OUT_CHAIN} -m mark --mark {m} -j RETURN\n"));
    }
    if spec.tproxy {
        r.push_str(&format!(
            "-A {OUT_CHAIN} -m mark --mark {TPROXY_MARK} -j RETURN\n"
        ));
    }
    if let Some(u) = spec.uid {
        r.push_str(&format!(
            "-A {OUT_CHAIN} -m owner --uid-owner {u} -j RETURN\n"
        ));
    }
    r.push_str(&format!("-A {OUT_CHAIN} -o lo -j RETURN\n"));
    let lo = if ipv6 { "::1/128" } else { "127.0.0.0/8" };
    r.push_str(&format!("-A {OUT_CHAIN} -d {lo} -j RETURN\n"));
    for c in spec
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| matches!(c, ipnet::IpNet::V6(_)) == ipv6)
    {
        r.push_str(&format!("-A {OUT_CHAIN} -d {c} -j RETURN\n"));
    }
    for p in &spec.exclude_outbound_ports {
        r.push_str(&format!("-A {OUT_CHAIN} -p tcp --dport {p} -j RETURN\n"));
    }
    r.push_str(&format!(
        "-A {OUT_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
        spec.outbound_port
    ));
    r.push_str("COMMIT\n");
    r
}

/// `program args…`, in network namespace `netns` if given.
fn command(netns: Option<&str>, program: &str, args: &[&str]) -> Command {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    c.args(args);
    c
}

fn run(mut c: Command, stdin: Option<&str>) -> Result<(), String> {
    let desc = format!("{c:?}");
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("{desc}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{desc}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{desc}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{desc} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Installs the capture rules in network namespace `netns` (`None`: this one), replacing
/// earlier ones. IPv6 rules are added when `ipv6` (needs `ip6tables`).
pub fn install(spec: &CaptureSpec, netns: Option<&str>, ipv6: bool) -> Result<(), String> {
    remove(netns, ipv6)?;
    if spec.tproxy {
        let families: &[&str] = if ipv6 { &["-4", "-6"] } else { &["-4"] };
        for fam in families {
            let mark = TPROXY_MARK.to_string();
            let table = TPROXY_TABLE.to_string();
            run(
                command(
                    netns,
                    "ip",
                    &[fam, "rule", "add", "fwmark", &mark, "lookup", &table],
                ),
                None,
            )?;
            let local = if *fam == "-6" { "::/0" } else { "0.0.0.0/0" };
            run(
                command(
                    netns,
                    "ip",
                    &[
                        fam, "route", "add", "local", local, "dev", "lo", "table", &table,
                    ],
                ),
                None,
            )?;
        }
    }
    run(
        command(netns, "iptables-restore", &["--noflush"]),
        Some(&rules(spec, false)),
    )?;
    if ipv6 {
        run(
            command(netns, "ip6tables-restore", &["--noflush"]),
            Some(&rules(spec, true)),
        )?;
    }
    Ok(())
}

/// Removes the capture rules (no error when there are none).
pub fn remove(netns: Option<&str>, ipv6: bool) -> Result<(), String> {
    // TPROXY's policy routing.
    let families: &[&str] = if ipv6 { &["-4", "-6"] } else { &["-4"] };
    for fam in families {
        let mark = TPROXY_MARK.to_string();
        let table = TPROXY_TABLE.to_string();
        while run(
            command(
                netns,
                "ip",
                &[*fam, "rule", "del", "fwmark", &mark, "lookup", &table],
            ),
            None,
        )
        .is_ok()
        {}
        let _ = run(
            command(netns, "ip", &[*fam, "route", "flush", "table", &table]),
            None,
        );
    }
    let tools: &[&str] = if ipv6 {
        &["iptables", "ip6tables"]
    } else {
        &["iptables"]
    };
    let m = TPROXY_MARK.to_string();
    // The rules added to the built-in chains (deleted however many times they were added),
    // then our own chains.
    let jumps: [(&str, &str, Vec<&str>); 5] = [
        ("nat", "PREROUTING", vec!["-p", "tcp", "-j", IN_CHAIN]),
        ("nat", "OUTPUT", vec!["-p", "tcp", "-j", OUT_CHAIN]),
        ("mangle", "PREROUTING", vec!["-p", "tcp", "-j", IN_CHAIN]),
        (
            "mangle",
            "OUTPUT",
            vec![
                "-p",
                "tcp",
                "-m",
                "mark",
                "--mark",
                &m,
                "-j",
                "CONNMARK",
                "--save-mark",
            ],
        ),
        (
            "mangle",
            "OUTPUT",
            vec![
                "-p",
                "tcp",
                "-m",
                "connmark",
                "--mark",
                &m,
                "-j",
                "CONNMARK",
                "--restore-mark",
            ],
        ),
    ];
    let chains = [
        ("nat", IN_CHAIN),
        ("nat", OUT_CHAIN),
        ("nat", crate::dns::capture::CHAIN),
        ("mangle", IN_CHAIN),
        ("mangle", DIVERT_CHAIN),
    ];
    for tool in tools {
        for (table, parent, args) in &jumps {
            while run(
                {
                    let mut c = command(netns, tool, &["-t", table, "-D", parent]);
                    c.args(args);
                    c
                },
                None,
            )
            .is_ok()
            {}
        }
        for jump in crate::dns::capture::JUMPS {
            let mut c = command(netns, tool, &["-t", "nat", "-D", "OUTPUT"]);
            c.args(jump);
            while run(c, None).is_ok() {
                c = command(netns, tool, &["-t", "nat", "-D", "OUTPUT"]);
                c.args(jump);
            }
        }
        for (table, chain) in chains {
            let exists = run(
                command(netns, tool, &["-t", table, "-L", chain, "-n"]),
                None,
            )
            .is_ok();
            if exists {
                for op in ["-F", "-X"] {
                    run(command(netns, tool, &["-t", table, op, chain]), None)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_redirect_everything_but_the_proxy_and_exclusions() {
        let spec = CaptureSpec {
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![53],
            exclude_outbound_cidrs: vec!["10.96.0.0/12".parse().unwrap_or_else(|_| unreachable!())],
            uid: Some(1337),
            ..CaptureSpec::default()
        };
        let r = rules(&spec, false);
        let lines: Vec<&str> = r.lines().collect();
        for want in [
            "-A PREROUTING -p tcp -j MESH_INBOUND",
            "-A OUTPUT -p tcp -j MESH_OUTPUT",
            "-A MESH_INBOUND -p tcp --dport 15008 -j RETURN",
            "-A MESH_INBOUND -p tcp --dport 22 -j RETURN",
            "-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 15006",
            "-A MESH_OUTPUT -m mark --mark 1337 -j RETURN",
            "-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A MESH_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "-A MESH_OUTPUT -d 10.96.0.0/12 -j RETURN",
            "-A MESH_OUTPUT -p tcp --dport 53 -j RETURN",
            "-A MESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(lines.contains(&want), "{want} missing:\n{r}");
        }
        // Exclusions come before the redirects.
        let pos = |s: &str| lines.iter().position(|l| *l == s);
        assert!(
            pos("-A MESH_OUTPUT -m mark --mark 1337 -j RETURN")
                < pos("-A MESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001")
        );
        assert!(rules(&spec, true).contains("-d ::1/128 -j RETURN"));
        assert!(!rules(&spec, true).contains("10.96.0.0/12"));
    }

    #[test]
    fn tproxy_rules_use_mangle_and_leave_loopback_alone() {
        let spec = CaptureSpec {
            tproxy: true,
            ..CaptureSpec::default()
        };
        let r = rules(&spec, false);
        let (mangle, nat) = r.split_once("*nat").unwrap_or_else(|| unreachable!());
        for want in [
            "-A MESH_INBOUND -i lo -j RETURN",
            "-A MESH_INBOUND -p tcp --dport 15008 -j RETURN",
            "-A MESH_INBOUND -p tcp -j TPROXY --on-port 15006 --tproxy-mark 1338/0xffffffff",
            "-A OUTPUT -p tcp -m connmark --mark 1338 -j CONNMARK --restore-mark",
        ] {
            assert!(mangle.contains(want), "{want} missing:\n{r}");
        }
        assert!(
            !nat.contains("MESH_INBOUND"),
            "no REDIRECT inbound with TPROXY:\n{r}"
        );
        assert!(nat.contains("-A MESH_OUTPUT -m mark --mark 1338 -j RETURN"));
    }
}
