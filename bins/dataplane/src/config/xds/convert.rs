//! Conversion of workload-API resources (`Workload`, `Service`, `Authorization`) into the
//! store's records, each validated on its own: a resource that cannot be converted is rejected
//! by name with the reason (the xDS client NACKs it).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_authz::{Condition, Match, Policy, Source, StringMatch};
use mesh_identity::{SpiffeId, TrustDomain};
use mesh_xds::pb::security as sec;
use mesh_xds::pb::workload as wl;

use super::super::state;
use super::super::{DEFAULT_HBONE_PORT, Workload};
use super::store::{GatewayRef, Local, XService, XWorkload, XdsStore};

fn ip_of(bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| "bad IPv4")?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| "bad IPv6")?,
        )),
        n => Err(format!("an address of {n} bytes is neither IPv4 nor IPv6")),
    }
}

fn port_of(field: &str, n: u32) -> Result<u16, String> {
    u16::try_from(n).map_err(|_| format!("{field}: {n} is not a port"))
}

fn gateway(field: &str, g: &wl::GatewayAddress) -> Result<GatewayRef, String> {
    let port = match g.hbone_mtls_port {
        0 => DEFAULT_HBONE_PORT,
        p => port_of(&format!("{field}.hbone_mtls_port"), p)?,
    };
    match &g.destination {
        Some(wl::gateway_address::Destination::Address(a)) => {
            let ip = ip_of(&a.address).map_err(|e| format!("{field}.address: {e}"))?;
            // Resolved at build time against our network (`network.rs`).
            if a.network.is_empty() {
                Ok(GatewayRef::Address(ip, port))
            } else {
                Ok(GatewayRef::OtherNetwork(a.network.clone(), ip, port))
            }
        }
        Some(wl::gateway_address::Destination::Hostname(h)) => Ok(GatewayRef::Hostname(
            format!("{}/{}", h.namespace, h.hostname.to_ascii_lowercase()),
            port,
        )),
        None => Err(format!("{field}: neither address nor hostname")),
    }
}

fn protocol(p: i32) -> super::super::Protocol {
    use super::super::Protocol;
    match wl::AppProtocol::try_from(p) {
        Ok(wl::AppProtocol::Http11) => Protocol::Http,
        Ok(wl::AppProtocol::Http2) => Protocol::Http2,
        Ok(wl::AppProtocol::Grpc) => Protocol::Grpc,
        Ok(wl::AppProtocol::Tcp) => Protocol::Tcp,
        Ok(wl::AppProtocol::Tls) => Protocol::Tls,
        _ => Protocol::Auto,
    }
}

/// The fields this data plane does not support; whether the workload is reached by HBONE.
fn check_workload(w: &wl::Workload) -> Result<bool, String> {
    if w.name.is_empty() || w.namespace.is_empty() {
        return Err("name and namespace are required".into());
    }
    if w.network_gateway.is_some() {
        return Err(
            "unsupported Istio field `network_gateway`: multiple networks are not supported yet"
                .into(),
        );
    }
    if !w.extensions.is_empty() {
        return Err("unsupported Istio field `extensions`".into());
    }
    match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(wl::TunnelProtocol::Hbone) => Ok(true),
        Ok(wl::TunnelProtocol::None) => Ok(false),
        _ => Err(format!(
            "unsupported Istio field `tunnel_protocol`: {} (HBONE or NONE only)",
            w.tunnel_protocol
        )),
    }
}

impl XdsStore {
    pub(super) fn workload(&self, w: &wl::Workload) -> Result<XWorkload, String> {
        let hbone = check_workload(w)?;
        let address = match w.addresses.first() {
            Some(a) => ip_of(a).map_err(|e| format!("addresses[0]: {e}"))?,
            None if !w.hostname.is_empty() => {
                return Err(format!(
                    "unsupported Istio field `hostname` ({:?}) without `addresses`: workloads resolved by DNS at connect time are not supported yet",
                    w.hostname
                ));
            }
            None => return Err("addresses: a workload without an address".into()),
        };
        let td = if w.trust_domain.is_empty() {
            self.settings.trust_domain.clone()
        } else {
            w.trust_domain
                .parse::<TrustDomain>()
                .map_err(|e| format!("trust_domain {:?}: {e}", w.trust_domain))?
        };
        let sa = if w.service_account.is_empty() {
            "default".to_owned()
        } else {
            w.service_account.clone()
        };
        let identity = SpiffeId::new(&td, &w.namespace, &sa)
            .map_err(|e| format!("service_account {sa:?}: {e}"))?;
        let waypoint = w
            .waypoint
            .as_ref()
            .map(|g| gateway("waypoint", g))
            .transpose()?;
        let mut services = Vec::new();
        for (key, list) in &w.services {
            let mut ports = Vec::new();
            for (i, p) in list.ports.iter().enumerate() {
                ports.push((
                    port_of(
                        &format!("services[{key}].ports[{i}].service_port"),
                        p.service_port,
                    )?,
                    port_of(
                        &format!("services[{key}].ports[{i}].target_port"),
                        p.target_port,
                    )?,
                ));
            }
            services.push((key.to_ascii_lowercase(), ports));
        }
        services.sort();
        // Telemetry reads the canonical service and revision from these labels.
        let mut labels = BTreeMap::new();
        if !w.canonical_name.is_empty() {
            labels.insert(
                "service.istio.io/canonical-name".to_owned(),
                w.canonical_name.clone(),
            );
        }
        if !w.canonical_revision.is_empty() {
            labels.insert(
                "service.istio.io/canonical-revision".to_owned(),
                w.canonical_revision.clone(),
            );
        }
        let key = format!("{}/{}", w.namespace, w.name);
        // A sidecar's own workload is served on its own node, whatever node istiod names.
        let node = match &self.local {
            Local::OneWorkload { workload } if *workload == key => {
                if address != self.settings.node_address {
                    tracing::warn!(workload = %key, %address, configured = %self.settings.node_address, "istiod gives the sidecar's workload another address than --address");
                }
                Some(self.settings.node.clone())
            }
            _ => (hbone && !w.node.is_empty()).then(|| w.node.clone()),
        };
        let locality = super::super::locality::workload_locality(w.locality.as_ref());
        let telemetry = state::peer_labels(
            &w.name,
            &w.namespace,
            &identity,
            &labels,
            // Istio's ztunnel labels source/destination_cluster with the workload's own
            // cluster (`w.cluster_id`; multi-cluster meshes), else ours.
            if w.cluster_id.is_empty() {
                &self.settings.cluster_id
            } else {
                &w.cluster_id
            },
            locality.as_ref(),
        );
        let arc = Arc::new(Workload {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            address,
            labels,
            service_account: sa,
            ports: BTreeMap::new(),
            node: node.clone(),
            hbone_addr: node
                .as_ref()
                .map(|_| SocketAddr::new(address, DEFAULT_HBONE_PORT)),
            netns: None,
            telemetry,
            identity: identity.clone(),
            waypoint: None,
            locality,
            application_tunnel: super::app_tunnel::convert(w, &self.local)?,
        });
        Ok(XWorkload {
            arc,
            key,
            healthy: w.status == wl::WorkloadStatus::Healthy as i32,
            waypoint,
            services,
            policies: w.authorization_policies.clone(),
            other_network: super::network::other_network(w, &self.network),
        })
    }

    pub(super) fn authorization(&self, a: &sec::Authorization) -> Result<Policy, String> {
        if a.name.is_empty() || a.namespace.is_empty() {
            return Err("name and namespace are required".into());
        }
        if a.dry_run {
            return Err(
                "unsupported Istio field `dry_run`: dry-run policies are not supported yet".into(),
            );
        }
        if !a.extensions.is_empty() {
            return Err("unsupported Istio field `extensions`".into());
        }
        let scope = match sec::Scope::try_from(a.scope) {
            Ok(sec::Scope::Global) => mesh_authz::Scope::Mesh,
            Ok(sec::Scope::Namespace) => mesh_authz::Scope::Namespace,
            Ok(sec::Scope::WorkloadSelector) => mesh_authz::Scope::Assigned,
            Err(_) => return Err(format!("scope: unknown value {}", a.scope)),
        };
        let action = match sec::Action::try_from(a.action) {
            Ok(sec::Action::Allow) => mesh_authz::Action::Allow,
            Ok(sec::Action::Deny) => mesh_authz::Action::Deny,
            Err(_) => return Err(format!("action: unknown value {}", a.action)),
        };
        let mut rules = Vec::new();
        for (i, r) in a.rules.iter().enumerate() {
            let mut when = Vec::new();
            for (j, c) in r.clauses.iter().enumerate() {
                // A clause without matches is no constraint (Istio's ztunnel).
                if c.matches.is_empty() {
                    continue;
                }
                let mut alts = Vec::new();
                for (k, m) in c.matches.iter().enumerate() {
                    let field = format!("rules[{i}].clauses[{j}].matches[{k}]");
                    if let Some(m) = convert_match(&field, m)? {
                        alts.push(m);
                    }
                }
                when.push(Condition::AnyOf(alts));
            }
            rules.push(mesh_authz::Rule {
                when,
                ..mesh_authz::Rule::default()
            });
        }
        Ok(Policy {
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            scope,
            action,
            rules,
            provider: None,
        })
    }
}

pub(super) fn service(s: &wl::Service, network: &str) -> Result<XService, String> {
    if s.name.is_empty() || s.namespace.is_empty() || s.hostname.is_empty() {
        return Err("name, namespace and hostname are required".into());
    }
    if !s.extensions.is_empty() {
        return Err("unsupported Istio field `extensions`".into());
    }
    let weighted = super::weighted::convert(s, gateway)?;
    let load_balancing = super::super::locality::load_balancing(s.load_balancing.as_ref())?;
    let (vips, scope) = super::network::service_scope(s, network)?;
    let mut ports = Vec::new();
    let mut seen = HashSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        let n = port_of(&format!("ports[{i}].service_port"), p.service_port)?;
        if n == 0 {
            return Err(format!("ports[{i}].service_port: 0 is not a port"));
        }
        if !seen.insert(n) {
            return Err(format!("ports[{i}].service_port: {n} is listed twice"));
        }
        let t = port_of(&format!("ports[{i}].target_port"), p.target_port)?;
        ports.push((n, t, protocol(p.app_protocol)));
    }
    let hostname = s.hostname.trim_end_matches('.').to_ascii_lowercase();
    Ok(XService {
        key: format!("{}/{hostname}", s.namespace),
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname,
        vips,
        ports,
        waypoint: s
            .waypoint
            .as_ref()
            .map(|g| gateway("waypoint", g))
            .transpose()?,
        weighted,
        load_balancing,
        scope,
    })
}

fn strings(field: &str, v: &[sec::StringMatch]) -> Result<Vec<StringMatch>, String> {
    v.iter()
        .enumerate()
        .map(|(i, m)| match &m.match_type {
            Some(sec::string_match::MatchType::Exact(s)) => Ok(StringMatch::Exact(s.clone())),
            Some(sec::string_match::MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s.clone())),
            Some(sec::string_match::MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s.clone())),
            Some(sec::string_match::MatchType::Presence(_)) => Ok(StringMatch::Presence),
            None => Err(format!("{field}[{i}]: no match type")),
        })
        .collect()
}

fn nets(field: &str, v: &[sec::Address]) -> Result<Vec<ipnet::IpNet>, String> {
    v.iter()
        .enumerate()
        .map(|(i, a)| {
            let ip = ip_of(&a.address).map_err(|e| format!("{field}[{i}]: {e}"))?;
            let len = u8::try_from(a.length).map_err(|_| format!("{field}[{i}].length"))?;
            ipnet::IpNet::new(ip, len).map_err(|_| {
                format!(
                    "{field}[{i}]: /{} is not a prefix length for {ip}",
                    a.length
                )
            })
        })
        .collect()
}

fn ports(field: &str, v: &[u32]) -> Result<Vec<u16>, String> {
    v.iter().map(|p| port_of(field, *p)).collect()
}

fn service_accounts(
    field: &str,
    v: &[sec::ServiceAccountMatch],
) -> Result<Vec<StringMatch>, String> {
    v.iter()
        .enumerate()
        .map(|(i, m)| {
            if m.namespace.is_empty()
                || m.service_account.is_empty()
                || m.namespace.contains('/')
                || m.service_account.contains('/')
            {
                return Err(format!(
                    "{field}[{i}]: namespace and serviceAccount are required, without '/'"
                ));
            }
            // Any trust domain: `<td>/ns/<ns>/sa/<sa>`.
            Ok(StringMatch::Suffix(format!(
                "/ns/{}/sa/{}",
                m.namespace, m.service_account
            )))
        })
        .collect()
}

/// One workload-API match; `None` when it sets nothing (Istio's ztunnel skips those).
fn convert_match(field: &str, m: &sec::Match) -> Result<Option<Match>, String> {
    if !m.extensions.is_empty() {
        return Err(format!("unsupported Istio field `{field}.extensions`"));
    }
    let out = Match {
        source: Source {
            principals: strings(&format!("{field}.principals"), &m.principals)?,
            not_principals: strings(&format!("{field}.not_principals"), &m.not_principals)?,
            namespaces: strings(&format!("{field}.namespaces"), &m.namespaces)?,
            not_namespaces: strings(&format!("{field}.not_namespaces"), &m.not_namespaces)?,
            ip_blocks: nets(&format!("{field}.source_ips"), &m.source_ips)?,
            not_ip_blocks: nets(&format!("{field}.not_source_ips"), &m.not_source_ips)?,
            ..Source::default()
        },
        service_accounts: service_accounts(
            &format!("{field}.service_accounts"),
            &m.service_accounts,
        )?,
        not_service_accounts: service_accounts(
            &format!("{field}.not_service_accounts"),
            &m.not_service_accounts,
        )?,
        destination_ips: nets(&format!("{field}.destination_ips"), &m.destination_ips)?,
        not_destination_ips: nets(
            &format!("{field}.not_destination_ips"),
            &m.not_destination_ips,
        )?,
        ports: ports(&format!("{field}.destination_ports"), &m.destination_ports)?,
        not_ports: ports(
            &format!("{field}.not_destination_ports"),
            &m.not_destination_ports,
        )?,
    };
    Ok((out != Match::default()).then_some(out))
}
