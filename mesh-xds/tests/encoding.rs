//! Wire compatibility with Istio: every field of the workload-API messages encoded on its own
//! and compared with bytes written out by hand from Istio's field numbers
//! (`istio/ztunnel` `proto/workload.proto` and `proto/authorization.proto`), then decoded
//! back. A wrong field number, wire type or packing in our `.proto` files fails here.
//!
//! Reading the bytes: a tag is `field_number << 3 | wire_type` as a varint (wire type 0 for
//! varints, 2 for length-delimited), e.g. `Workload.uid = 20` → `0xa2 0x01`; a string `"x"`
//! is `0x01 0x78`; repeated scalars are packed (`0x4a len …` for `destination_ports = 9`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_update)]

use mesh_xds::pb::security as sec;
use mesh_xds::pb::workload as wl;
use prost::Message;

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(what: &str, msg: M, want: &[u8]) {
    let got = msg.encode_to_vec();
    assert_eq!(
        got, want,
        "{what}: encoded {got:02x?}, Istio's field numbers give {want:02x?}"
    );
    assert_eq!(M::decode(want).unwrap(), msg, "{what}: decoding");
}

#[test]
fn every_field_matches_istio() {
    check(
        "wl::Workload.name",
        wl::Workload {
            name: "x".into(),
            ..Default::default()
        },
        &[0x0a, 0x01, 0x78],
    );
    check(
        "wl::Workload.namespace",
        wl::Workload {
            namespace: "x".into(),
            ..Default::default()
        },
        &[0x12, 0x01, 0x78],
    );
    check(
        "wl::Workload.addresses",
        wl::Workload {
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        },
        &[0x1a, 0x04, 0x0a, 0x00, 0x00, 0x01],
    );
    check(
        "wl::Workload.network",
        wl::Workload {
            network: "x".into(),
            ..Default::default()
        },
        &[0x22, 0x01, 0x78],
    );
    check(
        "wl::Workload.tunnel_protocol",
        wl::Workload {
            tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
            ..Default::default()
        },
        &[0x28, 0x01],
    );
    check(
        "wl::Workload.trust_domain",
        wl::Workload {
            trust_domain: "x".into(),
            ..Default::default()
        },
        &[0x32, 0x01, 0x78],
    );
    check(
        "wl::Workload.service_account",
        wl::Workload {
            service_account: "x".into(),
            ..Default::default()
        },
        &[0x3a, 0x01, 0x78],
    );
    check(
        "wl::Workload.waypoint",
        wl::Workload {
            waypoint: Some(wl::GatewayAddress {
                hbone_mtls_port: 15008,
                ..Default::default()
            }),
            ..Default::default()
        },
        &[0x42, 0x03, 0x18, 0xa0, 0x75],
    );
    check(
        "wl::Workload.node",
        wl::Workload {
            node: "x".into(),
            ..Default::default()
        },
        &[0x4a, 0x01, 0x78],
    );
    check(
        "wl::Workload.canonical_name",
        wl::Workload {
            canonical_name: "x".into(),
            ..Default::default()
        },
        &[0x52, 0x01, 0x78],
    );
    check(
        "wl::Workload.canonical_revision",
        wl::Workload {
            canonical_revision: "x".into(),
            ..Default::default()
        },
        &[0x5a, 0x01, 0x78],
    );
    check(
        "wl::Workload.workload_type",
        wl::Workload {
            workload_type: wl::WorkloadType::Pod as i32,
            ..Default::default()
        },
        &[0x60, 0x02],
    );
    check(
        "wl::Workload.workload_name",
        wl::Workload {
            workload_name: "x".into(),
            ..Default::default()
        },
        &[0x6a, 0x01, 0x78],
    );
    check(
        "wl::Workload.native_tunnel",
        wl::Workload {
            native_tunnel: true,
            ..Default::default()
        },
        &[0x70, 0x01],
    );
    check(
        "wl::Workload.authorization_policies",
        wl::Workload {
            authorization_policies: vec!["x".into()],
            ..Default::default()
        },
        &[0x82, 0x01, 0x01, 0x78],
    );
    check(
        "wl::Workload.status",
        wl::Workload {
            status: wl::WorkloadStatus::Unhealthy as i32,
            ..Default::default()
        },
        &[0x88, 0x01, 0x01],
    );
    check(
        "wl::Workload.cluster_id",
        wl::Workload {
            cluster_id: "x".into(),
            ..Default::default()
        },
        &[0x92, 0x01, 0x01, 0x78],
    );
    check(
        "wl::Workload.network_gateway",
        wl::Workload {
            network_gateway: Some(wl::GatewayAddress {
                hbone_mtls_port: 1,
                ..Default::default()
            }),
            ..Default::default()
        },
        &[0x9a, 0x01, 0x02, 0x18, 0x01],
    );
    check(
        "wl::Workload.uid",
        wl::Workload {
            uid: "x".into(),
            ..Default::default()
        },
        &[0xa2, 0x01, 0x01, 0x78],
    );
    check(
        "wl::Workload.hostname",
        wl::Workload {
            hostname: "x".into(),
            ..Default::default()
        },
        &[0xaa, 0x01, 0x01, 0x78],
    );
    check(
        "wl::Workload.services",
        wl::Workload {
            services: [(
                "a".to_string(),
                wl::PortList {
                    ports: vec![wl::Port {
                        service_port: 80,
                        ..Default::default()
                    }],
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        },
        &[
            0xb2, 0x01, 0x09, 0x0a, 0x01, 0x61, 0x12, 0x04, 0x0a, 0x02, 0x08, 0x50,
        ],
    );
    check(
        "wl::Workload.application_tunnel",
        wl::Workload {
            application_tunnel: Some(wl::ApplicationTunnel {
                protocol: 1,
                port: 0,
            }),
            ..Default::default()
        },
        &[0xba, 0x01, 0x02, 0x08, 0x01],
    );
    check(
        "wl::Workload.locality",
        wl::Workload {
            locality: Some(wl::Locality {
                region: "x".into(),
                zone: String::new(),
                subzone: String::new(),
            }),
            ..Default::default()
        },
        &[0xc2, 0x01, 0x03, 0x0a, 0x01, 0x78],
    );
    check(
        "wl::Workload.network_mode",
        wl::Workload {
            network_mode: wl::NetworkMode::HostNetwork as i32,
            ..Default::default()
        },
        &[0xc8, 0x01, 0x01],
    );
    check(
        "wl::Workload.extensions",
        wl::Workload {
            extensions: vec![wl::Extension {
                name: "x".into(),
                config: None,
            }],
            ..Default::default()
        },
        &[0xd2, 0x01, 0x03, 0x0a, 0x01, 0x78],
    );
    check(
        "wl::Workload.capacity",
        wl::Workload {
            capacity: Some(5),
            ..Default::default()
        },
        &[0xda, 0x01, 0x02, 0x08, 0x05],
    );
    check(
        "wl::Service.name",
        wl::Service {
            name: "x".into(),
            ..Default::default()
        },
        &[0x0a, 0x01, 0x78],
    );
    check(
        "wl::Service.namespace",
        wl::Service {
            namespace: "x".into(),
            ..Default::default()
        },
        &[0x12, 0x01, 0x78],
    );
    check(
        "wl::Service.hostname",
        wl::Service {
            hostname: "x".into(),
            ..Default::default()
        },
        &[0x1a, 0x01, 0x78],
    );
    check(
        "wl::Service.addresses",
        wl::Service {
            addresses: vec![wl::NetworkAddress {
                network: "x".into(),
                address: vec![],
                length: Some(0),
            }],
            ..Default::default()
        },
        &[0x22, 0x05, 0x0a, 0x01, 0x78, 0x18, 0x00],
    );
    check(
        "wl::Service.ports",
        wl::Service {
            ports: vec![wl::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: wl::AppProtocol::Http2 as i32,
            }],
            ..Default::default()
        },
        &[0x2a, 0x07, 0x08, 0x50, 0x10, 0x90, 0x3f, 0x18, 0x02],
    );
    check(
        "wl::Service.subject_alt_names",
        wl::Service {
            subject_alt_names: vec!["x".into()],
            ..Default::default()
        },
        &[0x32, 0x01, 0x78],
    );
    check(
        "wl::Service.waypoint",
        wl::Service {
            waypoint: Some(wl::GatewayAddress {
                destination: Some(wl::gateway_address::Destination::Hostname(
                    wl::NamespacedHostname {
                        namespace: "x".into(),
                        hostname: "x".into(),
                    },
                )),
                hbone_mtls_port: 0,
            }),
            ..Default::default()
        },
        &[0x3a, 0x08, 0x0a, 0x06, 0x0a, 0x01, 0x78, 0x12, 0x01, 0x78],
    );
    check(
        "wl::Service.load_balancing",
        wl::Service {
            load_balancing: Some(wl::LoadBalancing {
                routing_preference: vec![4, 2],
                mode: 2,
                health_policy: 1,
            }),
            ..Default::default()
        },
        &[0x42, 0x08, 0x0a, 0x02, 0x04, 0x02, 0x10, 0x02, 0x18, 0x01],
    );
    check(
        "wl::Service.ip_families",
        wl::Service {
            ip_families: wl::IpFamilies::Dual as i32,
            ..Default::default()
        },
        &[0x48, 0x03],
    );
    check(
        "wl::Service.extensions",
        wl::Service {
            extensions: vec![wl::Extension {
                name: "x".into(),
                config: None,
            }],
            ..Default::default()
        },
        &[0x52, 0x03, 0x0a, 0x01, 0x78],
    );
    check(
        "wl::Service.canonical",
        wl::Service {
            canonical: true,
            ..Default::default()
        },
        &[0x58, 0x01],
    );
    check(
        "wl::Service.ingress_use_waypoint",
        wl::Service {
            ingress_use_waypoint: true,
            ..Default::default()
        },
        &[0x60, 0x01],
    );
    check(
        "wl::Service.weighted_waypoints",
        wl::Service {
            weighted_waypoints: vec![wl::WeightedWaypoint {
                destination: None,
                weight: 7,
            }],
            ..Default::default()
        },
        &[0x6a, 0x02, 0x10, 0x07],
    );
    check(
        "wl::Service.visibility",
        wl::Service {
            visibility: wl::service::Visibility::Namespace as i32,
            ..Default::default()
        },
        &[0x70, 0x01],
    );
    check(
        "sec::Authorization.name",
        sec::Authorization {
            name: "x".into(),
            ..Default::default()
        },
        &[0x0a, 0x01, 0x78],
    );
    check(
        "sec::Authorization.namespace",
        sec::Authorization {
            namespace: "x".into(),
            ..Default::default()
        },
        &[0x12, 0x01, 0x78],
    );
    check(
        "sec::Authorization.scope",
        sec::Authorization {
            scope: sec::Scope::WorkloadSelector as i32,
            ..Default::default()
        },
        &[0x18, 0x02],
    );
    check(
        "sec::Authorization.action",
        sec::Authorization {
            action: sec::Action::Deny as i32,
            ..Default::default()
        },
        &[0x20, 0x01],
    );
    check(
        "sec::Authorization.rules",
        sec::Authorization {
            rules: vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match::default()],
                }],
            }],
            ..Default::default()
        },
        &[0x2a, 0x04, 0x0a, 0x02, 0x12, 0x00],
    );
    check(
        "sec::Authorization.dry_run",
        sec::Authorization {
            dry_run: true,
            ..Default::default()
        },
        &[0x30, 0x01],
    );
    check(
        "sec::Authorization.extensions",
        sec::Authorization {
            extensions: vec![wl::Extension {
                name: "x".into(),
                config: None,
            }],
            ..Default::default()
        },
        &[0x3a, 0x03, 0x0a, 0x01, 0x78],
    );
    check(
        "sec::Match.namespaces",
        sec::Match {
            namespaces: vec![sec::StringMatch {
                match_type: Some(sec::string_match::MatchType::Exact("x".into())),
            }],
            ..Default::default()
        },
        &[0x0a, 0x03, 0x0a, 0x01, 0x78],
    );
    check(
        "sec::Match.not_namespaces",
        sec::Match {
            not_namespaces: vec![sec::StringMatch {
                match_type: Some(sec::string_match::MatchType::Exact("x".into())),
            }],
            ..Default::default()
        },
        &[0x12, 0x03, 0x0a, 0x01, 0x78],
    );
    check(
        "sec::Match.principals",
        sec::Match {
            principals: vec![sec::StringMatch {
                match_type: Some(sec::string_match::MatchType::Exact("x".into())),
            }],
            ..Default::default()
        },
        &[0x1a, 0x03, 0x0a, 0x01, 0x78],
    );
    check(
        "sec::Match.not_principals",
        sec::Match {
            not_principals: vec![sec::StringMatch {
                match_type: Some(sec::string_match::MatchType::Exact("x".into())),
            }],
            ..Default::default()
        },
        &[0x22, 0x03, 0x0a, 0x01, 0x78],
    );
    check(
        "sec::Match.source_ips",
        sec::Match {
            source_ips: vec![sec::Address {
                address: vec![10, 0, 0, 0],
                length: 8,
            }],
            ..Default::default()
        },
        &[0x2a, 0x08, 0x0a, 0x04, 0x0a, 0x00, 0x00, 0x00, 0x10, 0x08],
    );
    check(
        "sec::Match.not_source_ips",
        sec::Match {
            not_source_ips: vec![sec::Address {
                address: vec![10, 0, 0, 0],
                length: 8,
            }],
            ..Default::default()
        },
        &[0x32, 0x08, 0x0a, 0x04, 0x0a, 0x00, 0x00, 0x00, 0x10, 0x08],
    );
    check(
        "sec::Match.destination_ips",
        sec::Match {
            destination_ips: vec![sec::Address {
                address: vec![10, 0, 0, 0],
                length: 8,
            }],
            ..Default::default()
        },
        &[0x3a, 0x08, 0x0a, 0x04, 0x0a, 0x00, 0x00, 0x00, 0x10, 0x08],
    );
    check(
        "sec::Match.not_destination_ips",
        sec::Match {
            not_destination_ips: vec![sec::Address {
                address: vec![10, 0, 0, 0],
                length: 8,
            }],
            ..Default::default()
        },
        &[0x42, 0x08, 0x0a, 0x04, 0x0a, 0x00, 0x00, 0x00, 0x10, 0x08],
    );
    check(
        "sec::Match.destination_ports",
        sec::Match {
            destination_ports: vec![80, 443],
            ..Default::default()
        },
        &[0x4a, 0x03, 0x50, 0xbb, 0x03],
    );
    check(
        "sec::Match.not_destination_ports",
        sec::Match {
            not_destination_ports: vec![22],
            ..Default::default()
        },
        &[0x52, 0x01, 0x16],
    );
    check(
        "sec::Match.service_accounts",
        sec::Match {
            service_accounts: vec![sec::ServiceAccountMatch {
                namespace: "x".into(),
                service_account: "x".into(),
            }],
            ..Default::default()
        },
        &[0x5a, 0x06, 0x0a, 0x01, 0x78, 0x12, 0x01, 0x78],
    );
    check(
        "sec::Match.not_service_accounts",
        sec::Match {
            not_service_accounts: vec![sec::ServiceAccountMatch {
                namespace: "x".into(),
                service_account: "x".into(),
            }],
            ..Default::default()
        },
        &[0x62, 0x06, 0x0a, 0x01, 0x78, 0x12, 0x01, 0x78],
    );
    check(
        "sec::Match.extensions",
        sec::Match {
            extensions: vec![wl::Extension {
                name: "x".into(),
                config: None,
            }],
            ..Default::default()
        },
        &[0x6a, 0x03, 0x0a, 0x01, 0x78],
    );
    check(
        "sec::StringMatch.exact",
        sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Exact("x".into())),
            ..Default::default()
        },
        &[0x0a, 0x01, 0x78],
    );
    check(
        "sec::StringMatch.prefix",
        sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Prefix("x".into())),
            ..Default::default()
        },
        &[0x12, 0x01, 0x78],
    );
    check(
        "sec::StringMatch.suffix",
        sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Suffix("x".into())),
            ..Default::default()
        },
        &[0x1a, 0x01, 0x78],
    );
    check(
        "sec::StringMatch.presence",
        sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Presence(())),
            ..Default::default()
        },
        &[0x22, 0x00],
    );
}

/// The `Address` oneof: a workload is field 1, a service field 2.
#[test]
fn address_oneof() {
    check(
        "Address.workload",
        wl::Address {
            r#type: Some(wl::address::Type::Workload(wl::Workload {
                uid: "x".into(),
                ..Default::default()
            })),
        },
        &[0x0a, 0x04, 0xa2, 0x01, 0x01, 0x78],
    );
    check(
        "Address.service",
        wl::Address {
            r#type: Some(wl::address::Type::Service(wl::Service {
                hostname: "x".into(),
                ..Default::default()
            })),
        },
        &[0x12, 0x03, 0x1a, 0x01, 0x78],
    );
    check(
        "GatewayAddress.address",
        wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Address(
                wl::NetworkAddress {
                    network: String::new(),
                    address: vec![10, 0, 0, 9],
                    length: None,
                },
            )),
            hbone_mtls_port: 15008,
        },
        &[0x12, 0x06, 0x12, 0x04, 10, 0, 0, 9, 0x18, 0xa0, 0x75],
    );
}

/// The fields the data plane makes effective for Istio 1.31's tunnels and waypoints, nested
/// as istiod sends them (istio/ztunnel `proto/workload.proto`: `Service.weighted_waypoints =
/// 13`, `WeightedWaypoint.destination = 1` / `weight = 2`, `GatewayAddress.hostname = 1` /
/// `address = 2` / `hbone_mtls_port = 3`, `Workload.hostname = 21`,
/// `Workload.application_tunnel = 23`, `ApplicationTunnel.protocol = 1` / `port = 2`).
#[test]
fn weighted_waypoints_hostname_and_application_tunnel_match_istio() {
    let by_host = wl::WeightedWaypoint {
        destination: Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Hostname(
                wl::NamespacedHostname {
                    namespace: "n".into(),
                    hostname: "h".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        weight: 3,
    };
    let by_addr = wl::WeightedWaypoint {
        destination: Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Address(
                wl::NetworkAddress {
                    network: String::new(),
                    address: vec![127, 224, 0, 4],
                    length: None,
                },
            )),
            hbone_mtls_port: 0,
        }),
        weight: u32::MAX,
    };
    check(
        "wl::Service.weighted_waypoints (hostname, address, u32::MAX)",
        wl::Service {
            weighted_waypoints: vec![by_host, by_addr],
            ..Default::default()
        },
        &[
            // entry 1: destination { hostname { "n", "h" }, hbone_mtls_port 15008 }, weight 3
            0x6a, 0x0f, 0x0a, 0x0b, 0x0a, 0x06, 0x0a, 0x01, 0x6e, 0x12, 0x01, 0x68, 0x18, 0xa0,
            0x75, 0x10, 0x03, //
            // entry 2: destination { address { address 127.224.0.4 } }, weight u32::MAX
            0x6a, 0x10, 0x0a, 0x08, 0x12, 0x06, 0x12, 0x04, 0x7f, 0xe0, 0x00, 0x04, 0x10, 0xff,
            0xff, 0xff, 0xff, 0x0f,
        ],
    );
    check(
        "wl::Workload.application_tunnel (PROXY, port 15088)",
        wl::Workload {
            application_tunnel: Some(wl::ApplicationTunnel {
                protocol: wl::application_tunnel::Protocol::Proxy as i32,
                port: 15088,
            }),
            ..Default::default()
        },
        &[0xba, 0x01, 0x05, 0x08, 0x01, 0x10, 0xf0, 0x75],
    );
    check(
        "wl::Workload.hostname without addresses",
        wl::Workload {
            name: "e".into(),
            hostname: "db.example".into(),
            ..Default::default()
        },
        &[
            0x0a, 0x01, 0x65, 0xaa, 0x01, 0x0a, 0x64, 0x62, 0x2e, 0x65, 0x78, 0x61, 0x6d, 0x70,
            0x6c, 0x65,
        ],
    );
}

/// The fields the data plane makes effective for Istio 1.31's networks and service lookups,
/// nested as istiod sends them (istio/ztunnel `proto/workload.proto`: `Workload.network = 4`,
/// `Service.addresses = 4` with `NetworkAddress.network = 1` / `address = 2` / `length = 3`
/// (proto3 `optional`: present even when 0), `Service.canonical = 11`,
/// `Service.ingress_use_waypoint = 12`, `Service.visibility = 14`,
/// `GatewayAddress.address = 2` with its network).
#[test]
fn networks_cidrs_canonical_and_visibility_match_istio() {
    check(
        "wl::Service (network addresses, a /16 CIDR, canonical, ingress_use_waypoint, NAMESPACE)",
        wl::Service {
            addresses: vec![
                wl::NetworkAddress {
                    network: "n1".into(),
                    address: vec![127, 223, 0, 0],
                    length: Some(16),
                },
                wl::NetworkAddress {
                    network: String::new(),
                    address: vec![127, 223, 9, 1],
                    length: None,
                },
            ],
            canonical: true,
            ingress_use_waypoint: true,
            visibility: wl::service::Visibility::Namespace as i32,
            ..Default::default()
        },
        &[
            // addresses[0]: network "n1", address 127.223.0.0, length 16
            0x22, 0x0c, 0x0a, 0x02, 0x6e, 0x31, 0x12, 0x04, 0x7f, 0xdf, 0x00, 0x00, 0x18, 0x10,
            // addresses[1]: address 127.223.9.1 (no network, no length: a host address)
            0x22, 0x06, 0x12, 0x04, 0x7f, 0xdf, 0x09, 0x01, //
            0x58, 0x01, // canonical
            0x60, 0x01, // ingress_use_waypoint
            0x70, 0x01, // visibility NAMESPACE
        ],
    );
    check(
        "wl::Workload.network with a waypoint address on that network",
        wl::Workload {
            network: "n1".into(),
            waypoint: Some(wl::GatewayAddress {
                destination: Some(wl::gateway_address::Destination::Address(
                    wl::NetworkAddress {
                        network: "n1".into(),
                        address: vec![127, 223, 0, 9],
                        length: None,
                    },
                )),
                hbone_mtls_port: 15008,
            }),
            ..Default::default()
        },
        &[
            0x22, 0x02, 0x6e, 0x31, // network "n1"
            // waypoint { address { network "n1", address 127.223.0.9 }, hbone_mtls_port 15008 }
            0x42, 0x0f, 0x12, 0x0a, 0x0a, 0x02, 0x6e, 0x31, 0x12, 0x04, 0x7f, 0xdf, 0x00, 0x09,
            0x18, 0xa0, 0x75,
        ],
    );
}

/// A field a later Istio adds is skipped by the decoder, as Istio's ztunnel (prost) does:
/// the rest of the message decodes unchanged, whatever the wire type of the unknown field.
#[test]
fn unknown_future_fields_are_skipped() {
    let known = wl::Service {
        name: "s".into(),
        canonical: true,
        ..Default::default()
    };
    let mut bytes = known.encode_to_vec();
    // field 99 varint 5; field 100 length-delimited "zz"; field 101 fixed32; field 102 fixed64
    bytes.extend_from_slice(&[0x98, 0x06, 0x05]);
    bytes.extend_from_slice(&[0xa2, 0x06, 0x02, b'z', b'z']);
    bytes.extend_from_slice(&[0xad, 0x06, 1, 2, 3, 4]);
    bytes.extend_from_slice(&[0xb1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(wl::Service::decode(bytes.as_slice()).unwrap(), known);
    let mut w = wl::Workload {
        network: "n1".into(),
        ..Default::default()
    }
    .encode_to_vec();
    w.extend_from_slice(&[0xf8, 0x07, 0x01]); // field 127 varint 1
    assert_eq!(wl::Workload::decode(w.as_slice()).unwrap().network, "n1");
}
