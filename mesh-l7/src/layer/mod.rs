//! The L7 request path as tower layers, role-agnostic: what a waypoint or a sidecar does to
//! each HTTP request is a stack of these, outermost first:
//!
//! - [`trace`]: `x-request-id` and a valid W3C `traceparent` on every request;
//! - [`record`]: the request counted and recorded (metrics, access log) once, when its
//!   response body ends or is dropped;
//! - [`guard`]: the proxy's own checks of a request as it arrives (hygiene);
//! - [`jwt`]: `RequestAuthentication` (401 for a bad token);
//! - [`authz`]: path normalization and `AuthorizationPolicy` (403 when denied);
//! - [`routing`]: the route table's decision (direct responses, redirects, weighted
//!   destinations, rewrites, header operations) in front of the caller's upstream service.
//!
//! Below routing, on the [`UpstreamRequest`] with its picked route: among others,
//! [`fault`] (a route's delays and aborts, flags `DI`/`FI`), [`timeout`] (the route's
//! request timeout, 504 `UT`), [`retry`] (tries again per the route's or the mesh's retry
//! policy and the destination's retry budget, each retry carrying an [`Attempt`]; the body
//! below it is a [`ReplayBody`]) and, under the retry layer, [`mirror`] (fire-and-forget
//! copies of first attempts to a route's mirrors).
//!
//! Each layer is a cloneable `FooLayer` building a `Foo<S>` service whose future is a concrete
//! type (no boxing per layer). What a request went through travels in extensions: the
//! verified JWT ([`Authenticated`]) in the request's, [`Meta`] (response flags, route,
//! upstream, audit) in the response's. The policy, key, route and recording sources are
//! traits the proxy implements; the crate does no I/O of its own.

pub mod attempt;
pub mod authz;
mod body;
pub mod ext_authz;
pub mod fault;
pub mod guard;
pub mod jwt;
mod meta;
pub mod mirror;
pub mod ratelimit;
pub mod record;
pub mod replay;
pub mod retry;
pub mod routing;
pub mod timeout;
pub mod trace;

pub use attempt::Attempt;
pub use authz::{AuthzLayer, AuthzSource, Scope};
pub use body::Body;
pub use ext_authz::{Authorizer, ExtAuthzLayer};
pub use fault::{Dice, Fault, FaultLayer, ThreadDice};
pub use guard::{Guard, GuardLayer, Refusal};
pub use jwt::{Authenticated, JwtLayer, JwtSource};
pub use meta::{Meta, UpstreamFailure, local};
pub use mirror::{Mirror, MirrorBody, MirrorLayer, MirrorLimits, MirrorStats};
pub use ratelimit::{GlobalAnswer, GlobalError, RateLimitLayer, RateLimitSource};
pub use record::{CountedBody, Finished, RecordLayer, RecordedBody, Recorder};
pub use replay::{DEFAULT_REPLAY_CAP, ReplayBody, ReplayError};
pub use retry::{RetryLayer, RetrySource};
pub use routing::{Lookup, Picked, RouteLayer, RouteSource, Target, UpstreamRequest};
pub use timeout::TimeoutLayer;
/// tower, as the layers use it (proxies compose the stack with its `ServiceBuilder`).
pub use tower;
pub use trace::{TraceContextLayer, TraceIds};

#[cfg(test)]
mod stack_tests;
#[cfg(test)]
pub(crate) mod testing;
