//! The resolver core, sans IO: a query and the asking pod's namespace in, an answer or
//! "forward it" out ([`resolve`]).
//!
//! As Istio's ztunnel (`src/dns/server.rs`): A and AAAA for mesh names are answered here,
//! authoritative, TTL 30 s; a mesh name without an address of the asked family is NODATA
//! (NOERROR, no records), not NXDOMAIN; every other name and type is forwarded. Beyond Istio
//! (its open bug istio/istio#55979, where `_port._tcp.svc.ns.svc` SRV lookups of headless
//! services fail): SRV for Kubernetes service names is answered here as Kubernetes DNS does
//! (one record per endpoint for a headless service, one for the service name otherwise), in
//! every short and search-domain form; an unknown port or protocol under a known service is
//! NXDOMAIN, as CoreDNS answers it.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::index::{DnsIndex, HostEntry, dashed};
use super::names::{candidates, srv_parts, wildcards};

/// TTL of the records answered here (Istio ztunnel `DEFAULT_TTL_SECONDS`).
pub const TTL: u32 = 30;
/// The UDP payload size this server advertises in EDNS (RFC 8020's / DNS flag day 2020's
/// 1232 bytes: no IP fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;

/// What to do with a query.
#[derive(Debug)]
pub enum Outcome {
    /// Send this response.
    Answer(Box<Message>),
    /// Not a mesh name (or not a type answered here): relay it to the upstream resolvers.
    Forward,
}

/// What a name resolved to.
enum Found<'a> {
    Host(&'a Arc<HostEntry>),
    Pod(IpAddr),
}

/// Resolves `query` for a client in `client_namespace` against `index`.
pub fn resolve(index: &DnsIndex, client_namespace: &str, query: &Message) -> Outcome {
    if query.metadata.op_code != OpCode::Query {
        return answer(error(query, ResponseCode::NotImp));
    }
    let [q] = query.queries.as_slice() else {
        // RFC 9619: a query has exactly one question.
        return answer(error(query, ResponseCode::FormErr));
    };
    if q.query_class() != DNSClass::IN {
        return Outcome::Forward;
    }
    let asked = q.name().to_ascii().to_ascii_lowercase();
    let name = asked.trim_end_matches('.');
    match q.query_type() {
        RecordType::A | RecordType::AAAA => {
            let Some(found) = lookup(index, name, client_namespace) else {
                return Outcome::Forward;
            };
            let mut m = response(query, ResponseCode::NoError);
            let addrs = match found {
                Found::Host(h) => h.addrs.clone(),
                Found::Pod(ip) => vec![ip],
            };
            add_addresses(&mut m.answers, q.name(), &addrs, q.query_type());
            answer(m)
        }
        RecordType::SRV => srv(index, client_namespace, query, q.name(), name),
        _ => Outcome::Forward,
    }
}

/// SRV for a Kubernetes service name (`_port._proto.<service name in any form>`).
fn srv(index: &DnsIndex, ns: &str, query: &Message, owner: &Name, name: &str) -> Outcome {
    let Some((port_name, proto, base)) = srv_parts(name) else {
        return Outcome::Forward;
    };
    let Some(Found::Host(host)) = lookup(index, base, ns) else {
        return Outcome::Forward;
    };
    if !host.kube {
        // A ServiceEntry host: Kubernetes DNS has no SRV for it; leave it upstream.
        return Outcome::Forward;
    }
    let port = host.ports.iter().find(|p| p.name == port_name);
    let (Some(port), "tcp") = (port, proto) else {
        // CoreDNS: an unknown port name or protocol under a service is NXDOMAIN.
        return answer(response(query, ResponseCode::NXDomain));
    };
    let mut m = response(query, ResponseCode::NoError);
    let Ok(service_name) = Name::from_ascii(format!("{}.", host.host)) else {
        return Outcome::Forward;
    };
    if host.headless {
        // Kubernetes DNS: one SRV per endpoint, target `<a-b-c-d>.<service>`.
        let weight = u16::try_from(100 / port.endpoints.len().max(1)).unwrap_or(100);
        for e in &port.endpoints {
            let Ok(target) = Name::from_ascii(format!("{}.{}.", dashed(e.address), host.host))
            else {
                continue;
            };
            let srv = SRV::new(0, weight.max(1), e.port, target.clone());
            m.answers
                .push(Record::from_rdata(owner.clone(), TTL, RData::SRV(srv)));
            add_addresses(&mut m.additionals, &target, &[e.address], RecordType::ANY);
        }
    } else {
        let srv = SRV::new(0, 100, port.port, service_name.clone());
        m.answers
            .push(Record::from_rdata(owner.clone(), TTL, RData::SRV(srv)));
        add_addresses(
            &mut m.additionals,
            &service_name,
            &host.addrs,
            RecordType::ANY,
        );
    }
    answer(m)
}

/// The mesh name `name` means for a client in `ns`, trying each candidate form in order.
fn lookup<'a>(index: &'a DnsIndex, name: &str, ns: &str) -> Option<Found<'a>> {
    for c in candidates(name, ns, index.domain()) {
        let hit = if index.has_wildcards() {
            wildcards(&c.name).find_map(|w| index.host(&w, ns))
        } else {
            index.host(&c.name, ns)
        };
        if let Some(h) = hit {
            return Some(Found::Host(h));
        }
        if c.pod_host
            && let Some(ip) = index.pod(&c.name, ns)
        {
            return Some(Found::Pod(ip));
        }
    }
    None
}

/// Appends A (for `A` or `ANY`) and AAAA (for `AAAA` or `ANY`) records of `addrs`.
fn add_addresses(out: &mut Vec<Record>, owner: &Name, addrs: &[IpAddr], ty: RecordType) {
    for ip in addrs {
        let rdata = match (ip, ty) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        out.push(Record::from_rdata(owner.clone(), TTL, rdata));
    }
}

fn answer(m: Message) -> Outcome {
    Outcome::Answer(Box::new(m))
}

/// An authoritative response to `query` with `code` and its question.
pub(crate) fn response(query: &Message, code: ResponseCode) -> Message {
    let mut m = Message::response(query.metadata.id, query.metadata.op_code);
    m.metadata.message_type = MessageType::Response;
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    // Names that are not the mesh's are resolved upstream for the client.
    m.metadata.recursion_available = true;
    m.metadata.response_code = code;
    m.queries.extend(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(edns);
    }
    m
}

/// A non-authoritative error response (`SERVFAIL`, `FORMERR`, `NOTIMP`).
pub(crate) fn error(query: &Message, code: ResponseCode) -> Message {
    let mut m = response(query, code);
    m.metadata.authoritative = false;
    m
}
