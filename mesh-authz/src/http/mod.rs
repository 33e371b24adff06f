//! L7 authorization at a waypoint: Istio `AuthorizationPolicy` HTTP fields (`hosts`,
//! `methods`, `paths` and their `not*` forms, `request.headers[...]` conditions) evaluated per
//! request, with paths normalized first the way Istio's `pathNormalization` modes do, so
//! `//admin`, `/%2Fadmin` and `/x/../admin` are all `/admin` to a policy (and to the upstream:
//! the path forwarded is the one evaluated).
//!
//! Policies reach a waypoint through `targetRefs` (`kind: Service` or `kind: Gateway`), as
//! Istio's waypoint policies do; selector and namespace policies stay with the ztunnels.
//! Request-principal fields and `request.auth.*` conditions use the request's verified JWT
//! ([`crate::jwt::RequestAuth`]); without one they are absent: `requestPrincipals` and
//! `values` do not match, `notRequestPrincipals` and `notValues` do. `remote.ip` is the original
//! client (`conn.remote_ip`); `connection.sni` is not provided, so it fails closed: a DENY rule
//! is enforced without it, an ALLOW rule using it never matches. Headers: see [`crate::headers`].
//!
//! The HTTP fields themselves ([`HttpOperation`], [`HttpCondition`], [`PathMatch`]) are plain
//! data of the policy model, re-exported here.

mod eval;
mod normalize;

pub use crate::model::l7::{HttpCondition, HttpOperation, PathMatch};
pub use eval::{HttpDecision, HttpFacts, audited, custom_matches, evaluate_conn, evaluate_http};
pub use normalize::{PathNormalization, normalize_path};
