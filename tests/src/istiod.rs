//! A fake istiod for end-to-end tests: Delta ADS serving Istio's workload API (`Address`,
//! `Authorization`) and the CA service (`IstioCertificateService`, signing with a local CA),
//! on two loopback ports. Tests change resources while proxies are connected, see every
//! request (ACK / NACK), kill the control plane and bring it back on the same ports.
//!
//! A thin composition of the libraries' fakes: `mesh_xds::testing::FakeAds` and
//! `mesh_identity::testing::FakeCa`, both requiring the bearer token `test-token`.

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use mesh_identity::LocalCa;
use mesh_identity::testing::FakeCa;
use mesh_xds::pb;
use mesh_xds::testing::FakeAds;
use prost::Message as _;

pub use mesh_identity::testing::CaRequest;
pub use mesh_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};

/// The bearer token both services require.
const TOKEN: &str = "test-token";

/// The fake control plane.
#[derive(Clone)]
pub struct FakeIstiod {
    pub xds_addr: SocketAddr,
    pub ca_addr: SocketAddr,
    ads: FakeAds,
    ca: FakeCa,
}

impl FakeIstiod {
    /// Serves on two free loopback ports; certificates are signed by `ca`.
    pub async fn start(ca: LocalCa) -> FakeIstiod {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let ads = FakeAds::start(loopback).await.unwrap();
        ads.require_bearer(Some(TOKEN));
        let ca = FakeCa::start(ca, loopback).await.unwrap();
        ca.require_bearer(Some(TOKEN));
        FakeIstiod {
            xds_addr: ads.addr(),
            ca_addr: ca.addr(),
            ads,
            ca,
        }
    }

    /// Kills the control plane: listeners closed, every connection dropped.
    pub fn stop(&self) {
        self.ads.stop();
        self.ca.stop();
    }

    /// Brings it back on the same ports, with the resources it holds.
    pub async fn restart(&self) {
        self.ads.restart().await.unwrap();
        self.ca.restart().await.unwrap();
    }

    /// Adds or replaces resource `name` of `type_url`, pushing it to subscribed streams.
    pub fn set(&self, type_url: &str, name: &str, value: Vec<u8>) {
        self.ads.set(type_url, name, value);
    }

    /// Adds or replaces several resources in one response.
    pub fn set_many(&self, type_url: &str, items: Vec<(String, Vec<u8>)>) {
        self.ads.set_many(type_url, items);
    }

    /// Removes resource `name`, pushing the removal.
    pub fn remove(&self, type_url: &str, name: &str) {
        self.ads.remove(type_url, name);
    }

    /// Changes resources without pushing (as if changed while no proxy was connected).
    pub fn set_quietly(&self, type_url: &str, name: &str, value: Option<Vec<u8>>) {
        self.ads.set_quietly(type_url, name, value);
    }

    /// Makes the CA answer `UNAVAILABLE` (or serve again).
    pub fn set_ca_down(&self, down: bool) {
        self.ca.set_down(down);
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.ads.requests()
    }

    /// The NACKs received: (type, error message).
    pub fn nacks(&self) -> Vec<(String, String)> {
        self.ads.nacks()
    }

    /// Every CA request received.
    pub fn ca_requests(&self) -> Vec<CaRequest> {
        self.ca.requests()
    }
}

/// An HBONE workload on `node` in namespace `ns`, with service account `sa`, member of
/// `services` (`namespace/hostname`, (service port, target port)).
pub fn workload(
    name: &str,
    ns: &str,
    ip: std::net::IpAddr,
    sa: &str,
    node: &str,
    services: &[(&str, u16, u16)],
) -> pb::workload::Workload {
    let mut map: HashMap<String, pb::workload::PortList> = HashMap::new();
    for (svc, port, target) in services {
        map.entry((*svc).to_owned())
            .or_default()
            .ports
            .push(pb::workload::Port {
                service_port: u32::from(*port),
                target_port: u32::from(*target),
                app_protocol: 0,
            });
    }
    pb::workload::Workload {
        uid: format!("Kubernetes//Pod/{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        addresses: vec![ip_bytes(ip)],
        tunnel_protocol: pb::workload::TunnelProtocol::Hbone as i32,
        service_account: sa.into(),
        node: node.into(),
        canonical_name: name.into(),
        canonical_revision: "v1".into(),
        workload_name: name.into(),
        services: map,
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    }
}

/// A service `hostname` with `vip` and TCP `ports` (service port, target port).
pub fn service(
    name: &str,
    ns: &str,
    vip: std::net::IpAddr,
    ports: &[(u16, u16)],
) -> pb::workload::Service {
    pb::workload::Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        addresses: vec![pb::workload::NetworkAddress {
            network: String::new(),
            address: ip_bytes(vip),
            length: None,
        }],
        ports: ports
            .iter()
            .map(|(p, t)| pb::workload::Port {
                service_port: u32::from(*p),
                target_port: u32::from(*t),
                app_protocol: pb::workload::AppProtocol::Tcp as i32,
            })
            .collect(),
        ..Default::default()
    }
}

/// The command running binary `role` with `args`, following the fake istiod at `xds` with
/// certificates from the CA at `ca`, trusting `root`, presenting the token in `token`, logging
/// with the filter `log`.
pub fn following(
    role: &str,
    args: &[&str],
    xds: SocketAddr,
    ca: SocketAddr,
    root: &std::path::Path,
    token: &std::path::Path,
    log: &str,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(crate::bin(role));
    cmd.args(args)
        .arg("--xds-address")
        .arg(format!("http://{xds}"))
        .arg("--ca-address")
        .arg(format!("http://{ca}"))
        .arg("--xds-root-ca")
        .arg(root)
        .arg("--xds-token")
        .arg(token)
        .args(["--log", log]);
    cmd
}

/// An HTTP service in `ns` with port 9000 to 9000 (its protocol declared, so waypoints and
/// sidecars proxy it per request), behind the waypoint `wp.ns.svc.cluster.local` when
/// `waypoint`.
pub fn http_service(name: &str, vip: std::net::IpAddr, waypoint: bool) -> pb::workload::Service {
    let mut s = service(name, "ns", vip, &[(9000, 9000)]);
    s.ports[0].app_protocol = pb::workload::AppProtocol::Http11 as i32;
    if waypoint {
        s.waypoint = Some(pb::workload::GatewayAddress {
            destination: Some(pb::workload::gateway_address::Destination::Hostname(
                pb::workload::NamespacedHostname {
                    namespace: "ns".into(),
                    hostname: "wp.ns.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        });
    }
    s
}

pub fn ip_bytes(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Encodes a workload as an `Address` resource.
pub fn address_of_workload(w: pb::workload::Workload) -> Vec<u8> {
    pb::workload::Address {
        r#type: Some(pb::workload::address::Type::Workload(w)),
    }
    .encode_to_vec()
}

/// Encodes a service as an `Address` resource.
pub fn address_of_service(s: pb::workload::Service) -> Vec<u8> {
    pb::workload::Address {
        r#type: Some(pb::workload::address::Type::Service(s)),
    }
    .encode_to_vec()
}
