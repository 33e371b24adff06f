//! The xDS bookkeeping of a Delta ADS client, without IO: which requests to send when a
//! stream starts, and how to answer each response (ACK or NACK), given what the handlers
//! accepted.
//!
//! Inputs: a stream (re)starts ([`Session::start`]), a response arrives
//! ([`Session::receive`]), the handler's verdict on it ([`Session::complete`]). Outputs: the
//! `DeltaDiscoveryRequest`s to send. No sockets, tasks or clocks; the IO client
//! ([`Client`](crate::Client)) drives it, and the property tests in
//! `tests/session.rs` drive it directly.
//!
//! Invariants (xDS semantics, as Envoy's delta subscription state keeps them):
//! - every response is answered by exactly one request carrying its nonce: an ACK, or a NACK
//!   whose `error_detail` names each rejected resource (the rest of the update still applies);
//! - the accepted version of a resource changes only when the handler applied it: a rejected
//!   resource keeps its last accepted version (or none), a removal drops it;
//! - a resumed stream sends, per type, exactly the accepted versions as
//!   `initial_resource_versions`, so the control plane sends only what changed and re-sends
//!   what was rejected.

use std::collections::{HashMap, HashSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;

use crate::{NodeInfo, Rejection};

/// gRPC `INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// The bookkeeping of one client across its streams.
#[derive(Debug, Clone)]
pub struct Session {
    node: NodeInfo,
    types: Vec<Subscription>,
    /// Incremented by each [`Session::start`]; tickets of an earlier stream get no reply.
    stream: u64,
}

#[derive(Debug, Clone)]
struct Subscription {
    type_url: &'static str,
    /// Resource name → version of what the handler applied.
    accepted: HashMap<String, String>,
}

/// What to do with a response.
#[derive(Debug)]
#[must_use]
pub enum Received {
    /// Hand the update to the handler of its type, then give its verdict to
    /// [`Session::complete`], which makes the ACK or NACK.
    Apply(Update),
    /// Nothing to apply: send this NACK (the type was not subscribed to). Boxed: the
    /// request message is large and this case is rare.
    Reply(Box<DeltaDiscoveryRequest>),
}

/// An update for a handler: the resources of a response that can be handed over.
#[derive(Debug)]
pub struct Update {
    /// The subscribed type.
    pub type_url: &'static str,
    /// Resources added or changed: name and encoded message.
    pub upserts: Vec<(String, Vec<u8>)>,
    /// Names removed (also those never accepted: a handler ignores what it does not hold).
    pub removes: Vec<String>,
    /// What [`Session::complete`] needs to answer this response.
    pub ticket: Ticket,
}

/// The pending answer to one response; consumed by [`Session::complete`].
#[derive(Debug)]
#[must_use = "every response must be answered: pass the ticket to Session::complete"]
pub struct Ticket {
    stream: u64,
    index: usize,
    nonce: String,
    /// (name, version) of the resources handed over.
    versions: Vec<(String, String)>,
    removes: Vec<String>,
    /// Resources refused before reaching the handler (wrong type, no body).
    rejected: Vec<Rejection>,
}

impl Session {
    /// A session subscribing to `type_urls` (wildcard), in order; a repeated type URL is
    /// subscribed to once.
    pub fn new(node: NodeInfo, type_urls: impl IntoIterator<Item = &'static str>) -> Session {
        let mut types: Vec<Subscription> = Vec::new();
        for type_url in type_urls {
            if !types.iter().any(|t| t.type_url == type_url) {
                types.push(Subscription {
                    type_url,
                    accepted: HashMap::new(),
                });
            }
        }
        Session {
            node,
            types,
            stream: 0,
        }
    }

    /// A stream starts (first or resumed): the subscription requests to send, one per type
    /// in order, the first carrying the node, each with the accepted versions as
    /// `initial_resource_versions`. Answers to responses of an earlier stream are no longer
    /// sent.
    pub fn start(&mut self) -> Vec<DeltaDiscoveryRequest> {
        self.stream += 1;
        self.types
            .iter()
            .enumerate()
            .map(|(i, t)| DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node.to_node()),
                type_url: t.type_url.to_owned(),
                initial_resource_versions: t.accepted.clone(),
                ..DeltaDiscoveryRequest::default()
            })
            .collect()
    }

    /// A response arrived: either an update to apply, or (for a type not subscribed to) the
    /// NACK to send at once. Resources whose body is missing or of another type are
    /// rejected here and never reach the handler.
    pub fn receive(&mut self, resp: DeltaDiscoveryResponse) -> Received {
        let Some(index) = self.types.iter().position(|t| t.type_url == resp.type_url) else {
            return Received::Reply(Box::new(reply(
                resp.type_url.clone(),
                resp.nonce,
                Some(format!("not subscribed to {}", resp.type_url)),
            )));
        };
        let type_url = self.types[index].type_url;
        let mut rejected = Vec::new();
        let mut upserts = Vec::with_capacity(resp.resources.len());
        let mut versions = Vec::with_capacity(resp.resources.len());
        for r in resp.resources {
            match r.resource {
                Some(any) if any.type_url == type_url => {
                    versions.push((r.name.clone(), r.version));
                    upserts.push((r.name, any.value));
                }
                Some(any) => rejected.push(Rejection {
                    name: r.name,
                    reason: format!("resource of type {} in a {type_url} response", any.type_url),
                }),
                None => rejected.push(Rejection {
                    name: r.name,
                    reason: "no resource body".into(),
                }),
            }
        }
        let removes = resp.removed_resources;
        Received::Apply(Update {
            type_url,
            upserts,
            removes: removes.clone(),
            ticket: Ticket {
                stream: self.stream,
                index,
                nonce: resp.nonce,
                versions,
                removes,
                rejected,
            },
        })
    }

    /// The handler's verdict on an update (the resources it rejected; the rest applied):
    /// records the accepted versions and returns the ACK, or the NACK naming every rejected
    /// resource. `None` when the ticket belongs to an earlier stream (the versions are still
    /// recorded, since the handler applied the update).
    pub fn complete(
        &mut self,
        ticket: Ticket,
        handler_rejected: Vec<Rejection>,
    ) -> Option<DeltaDiscoveryRequest> {
        let Ticket {
            stream,
            index,
            nonce,
            versions,
            removes,
            mut rejected,
        } = ticket;
        rejected.extend(handler_rejected);
        let sub = self.types.get_mut(index)?;
        // A removal always applies (the control plane no longer has the resource).
        for name in &removes {
            sub.accepted.remove(name);
        }
        // A rejected resource keeps its last accepted version (or none), so a resume asks
        // for it again.
        let refused: HashSet<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
        for (name, version) in versions {
            if !refused.contains(name.as_str()) {
                sub.accepted.insert(name, version);
            }
        }
        if stream != self.stream {
            return None;
        }
        let detail = (!rejected.is_empty()).then(|| {
            rejected
                .iter()
                .map(|r| format!("{}: {}", r.name, r.reason))
                .collect::<Vec<_>>()
                .join("; ")
        });
        Some(reply(sub.type_url.to_owned(), nonce, detail))
    }

    /// The accepted versions of `type_url` (name → version), if subscribed to.
    pub fn accepted(&self, type_url: &str) -> Option<&HashMap<String, String>> {
        self.types
            .iter()
            .find(|t| t.type_url == type_url)
            .map(|t| &t.accepted)
    }

    /// The subscribed type URLs, in order.
    pub fn type_urls(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.types.iter().map(|t| t.type_url)
    }
}

/// An ACK (`detail` = `None`) or a NACK for the response with `nonce`.
fn reply(type_url: String, nonce: String, detail: Option<String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url,
        response_nonce: nonce,
        error_detail: detail.map(|message| RpcStatus {
            code: INVALID_ARGUMENT,
            message,
            ..RpcStatus::default()
        }),
        ..DeltaDiscoveryRequest::default()
    }
}

/// The NACK detail of a request, if it is a NACK.
pub fn nack_detail(request: &DeltaDiscoveryRequest) -> Option<&str> {
    request.error_detail.as_ref().map(|s| s.message.as_str())
}
