//! External authorization (Istio `AuthorizationPolicy` `action: CUSTOM`, Envoy's `ext_authz`
//! filter): the `CUSTOM` policies whose rules match a request name the providers asked about
//! it, before DENY and ALLOW are evaluated (the [`super::authz`] layer, next in the stack).
//!
//! - Which policies apply, and the connection's facts, come from the same [`AuthzSource`] as
//!   the authorization layer; the rules see the normalized path, as DENY and ALLOW do, so
//!   `//admin` cannot skip a check on `/admin`.
//! - The providers and the calls are the caller's [`Authorizer`] (the data plane speaks
//!   Envoy's `envoy.service.auth.v3.Authorization/Check` gRPC API).
//! - [`decide`] is the sans-IO core: a provider's answer (or its error) in, a [`Verdict`]
//!   out. Denied: the authorizer's status (403 by default), body and headers, flag `UAEX`.
//!   Error or timeout: let through with `failOpen`, else `statusOnError` (403 by default).
//! - Allowed: the authorizer's headers are set on the upstream request, overwriting what the
//!   client sent (a client cannot pre-set them), its removals applied, and its response
//!   headers added to the response.
//! - Several matching providers are asked in policy order, once each; the first denial wins.
//!
//! With no `CUSTOM` policy in the config ([`Authorizer::active`] false) a request costs one
//! call and no allocation.
//!
//! [`AuthzSource`]: super::authz::AuthzSource

mod core;
mod service;
mod types;

pub use self::core::{Verdict, apply_upstream, decide};
pub use service::{ExtAuthz, ExtAuthzFuture, ExtAuthzLayer};
pub use types::{Authorizer, CheckError, CheckInput, CheckResult, HeaderMode, Provider};

#[cfg(test)]
mod tests;
