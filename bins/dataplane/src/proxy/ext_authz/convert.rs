//! Envoy's ext_authz messages: the `CheckRequest` a request becomes (attributes as Envoy
//! fills them) and the `CheckResponse` read back (as Envoy's gRPC ext_authz client reads it).

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValueOption, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use http::{HeaderName, HeaderValue, StatusCode};
use mesh_l7::layer::ext_authz::{CheckInput, CheckResult, HeaderMode};

/// The two ends of the connection a request came on, as the policies saw them.
pub(crate) struct Peers {
    /// The client (the original one, where a peer proxy asserted it).
    pub(crate) source: SocketAddr,
    /// Its SPIFFE id, `None` for plaintext.
    pub(crate) source_principal: Option<String>,
    /// Where the request went.
    pub(crate) destination: SocketAddr,
    /// The SPIFFE id of this end (the proxy's or the destination workload's).
    pub(crate) destination_principal: Option<String>,
}

fn peer(addr: SocketAddr, principal: Option<String>) -> Peer {
    Peer {
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
                ..SocketAddress::default()
            })),
        }),
        principal: principal.unwrap_or_default(),
        ..Peer::default()
    }
}

/// The `CheckRequest` for a request: source and destination (address, principal), and the
/// HTTP request (id, method, path with query, host, scheme, protocol, headers with Envoy's
/// pseudo-headers; repeated headers joined with `,`). No body (`size` -1, unknown).
pub(crate) fn request(input: CheckInput, peers: Peers) -> CheckRequest {
    let mut headers: HashMap<String, String> = HashMap::with_capacity(input.headers.len() + 4);
    for (name, value) in &input.headers {
        let v = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let id = headers.get("x-request-id").cloned().unwrap_or_default();
    headers.insert(":authority".into(), input.host.clone());
    headers.insert(":method".into(), input.method.as_str().to_owned());
    headers.insert(":path".into(), input.path.clone());
    headers.insert(":scheme".into(), input.scheme.to_owned());
    let (query, fragment) = (
        input
            .path
            .split_once('?')
            .map(|(_, q)| q.to_owned())
            .unwrap_or_default(),
        String::new(),
    );
    let http = HttpRequest {
        id,
        method: input.method.as_str().to_owned(),
        headers,
        path: input.path,
        host: input.host,
        scheme: input.scheme.to_owned(),
        query,
        fragment,
        size: -1,
        protocol: input.protocol.to_owned(),
        ..HttpRequest::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(peers.source, peers.source_principal)),
            destination: Some(peer(peers.destination, peers.destination_principal)),
            request: Some(AttrRequest {
                http: Some(http),
                ..AttrRequest::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

/// A header of the authorizer's answer; invalid names or values are dropped.
fn header(o: &HeaderValueOption) -> Option<(HeaderName, HeaderValue, HeaderMode)> {
    let h = o.header.as_ref()?;
    let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
    let raw: &[u8] = if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
    };
    let value = HeaderValue::from_bytes(raw).ok()?;
    // Envoy ext_authz: `append` unset or false overwrites ("defaults to false in this
    // message"); `append_action` is read only for its non-default actions.
    #[allow(deprecated)]
    let append = o.append.as_ref().map(|b| b.value);
    let mode = match (append, HeaderAppendAction::try_from(o.append_action)) {
        (Some(true), _) => HeaderMode::Append,
        (_, Ok(HeaderAppendAction::AddIfAbsent)) => HeaderMode::AddIfAbsent,
        (_, Ok(HeaderAppendAction::OverwriteIfExists)) => HeaderMode::OverwriteIfExists,
        _ => HeaderMode::Overwrite,
    };
    Some((name, value, mode))
}

fn pairs(v: &[HeaderValueOption]) -> Vec<(HeaderName, HeaderValue)> {
    v.iter()
        .filter_map(header)
        .map(|(n, v, _)| (n, v))
        .collect()
}

/// The layer's reading of a `CheckResponse`: `status.code` OK (0) allows with the
/// `ok_response`'s changes; any other code denies with the `denied_response` (or
/// `error_response`) status, headers and body, as Envoy's gRPC ext_authz client does.
pub(crate) fn convert(resp: CheckResponse) -> CheckResult {
    let ok = resp.status.as_ref().is_none_or(|s| s.code == 0);
    match (ok, resp.http_response) {
        (true, Some(HttpResponse::OkResponse(r))) => CheckResult::Allow {
            upstream: r.headers.iter().filter_map(header).collect(),
            remove: r
                .headers_to_remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            downstream: pairs(&r.response_headers_to_add),
        },
        (true, _) => CheckResult::Allow {
            upstream: Vec::new(),
            remove: Vec::new(),
            downstream: Vec::new(),
        },
        (false, Some(HttpResponse::DeniedResponse(d) | HttpResponse::ErrorResponse(d))) => {
            CheckResult::Deny {
                status: d
                    .status
                    .and_then(|s| u16::try_from(s.code).ok())
                    .and_then(|c| StatusCode::from_u16(c).ok()),
                headers: pairs(&d.headers),
                body: Bytes::from(d.body),
            }
        }
        (false, _) => CheckResult::Deny {
            status: None,
            headers: Vec::new(),
            body: Bytes::new(),
        },
    }
}
