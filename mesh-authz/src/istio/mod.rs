//! Istio's `AuthorizationPolicy` spec (security.istio.io/v1) as users write it, and its
//! validation into the crate's own [`Policy`](crate::Policy) model.
//!
//! Unknown fields are errors; `CUSTOM` policies name their external authorizer in
//! `provider.name` (checked against the mesh's `extensionProviders` by the data plane);
//! `AUDIT` marks requests at waypoints; `targetRefs` make a
//! waypoint policy. HTTP-only fields are accepted and recorded: at L4 they follow Istio's
//! ztunnel translation (an ALLOW rule using them never matches; a DENY rule is enforced
//! without them, i.e. more broadly).
//!
//! Layout: `spec` (the serde types), `refs` (service accounts, `targetRefs` and the scope
//! they give), `convert` (spec → model). [`FieldError`] lives in the crate's error module and
//! is re-exported here.

mod convert;
pub(crate) mod refs;
pub(crate) mod spec;

pub use crate::error::FieldError;
pub use convert::{L4_WHEN_KEYS, parse_cidr};
pub use spec::{
    AuthorizationPolicySpec, ConditionSpec, FromSpec, OperationSpec, ProviderSpec, RuleSpec,
    SourceSpec, TargetRefSpec, ToSpec, WorkloadSelector,
};
