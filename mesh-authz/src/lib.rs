//! Istio `AuthorizationPolicy` for the mesh: the spec as users write it ([`istio`]), the policy
//! model with Istio's L4 matching semantics ([`Policy`]), and a per-workload index compiled at
//! config time ([`PolicyIndex`]) that decides a connection without scanning every policy.
//!
//! [`peer`] resolves Istio `PeerAuthentication` (STRICT / PERMISSIVE per workload and port).
//!
//! The decision core is synchronous and allocation-free on the allow path: inputs in
//! ([`Connection`]), [`Decision`] out. No tokio, no I/O.
//!
//! # Layers
//!
//! Modules import only from the layers below them (`scripts/import-cycles.py mesh-authz`
//! checks that the module graph has no cycle):
//!
//! 1. `error` ([`Error`], [`FieldError`]) and `model`: plain data ([`Policy`],
//!    [`StringMatch`], the HTTP fields in `model::l7`) with Istio's L4 matching semantics.
//! 2. [`istio`], the `AuthorizationPolicy` spec (serde types, `targetRefs`/selector scope)
//!    validated into the model; [`headers`], request headers as policies see them.
//! 3. L4 evaluation: `compiled` and `index` ([`PolicyIndex`]); [`peer`]
//!    (`PeerAuthentication`, using the Istio selector types and [`WorkloadRef`]).
//! 4. [`jwt`], `RequestAuthentication` (its spec uses the Istio selector and `targetRefs`)
//!    and per-request token verification into a [`jwt::RequestAuth`].
//! 5. [`http`], L7 evaluation per request, over the model, [`headers`] and the verified JWT.
//!
//! The root only declares modules and re-exports.
//!
//! ```
//! use mesh_authz::{Connection, PolicyIndex, WorkloadRef, istio::AuthorizationPolicySpec};
//! let spec: AuthorizationPolicySpec = serde_json::from_str(r#"{
//!   "selector": {"matchLabels": {"app": "db"}},
//!   "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}]}]
//! }"#).unwrap();
//! let policy = spec.to_policy("shop", "db-from-web", "istio-system").unwrap();
//! let labels = [("app".to_string(), "db".to_string())].into_iter().collect();
//! let db = WorkloadRef { key: "shop/db", namespace: "shop", labels: &labels };
//! let index = PolicyIndex::build(&[policy], [db], "istio-system");
//! let conn = |principal| Connection {
//!     source_ip: "10.0.0.1".parse().unwrap(), remote_ip: None,
//!     source_principal: Some(principal), source_namespace: Some("shop"),
//!     destination_ip: "10.0.0.2".parse().unwrap(), destination_port: 5432,
//! };
//! assert!(index.evaluate("shop/db", &conn("cluster.local/ns/shop/sa/web")).is_allowed());
//! assert!(!index.evaluate("shop/db", &conn("cluster.local/ns/shop/sa/other")).is_allowed());
//! ```

#![warn(missing_docs)]

mod compiled;
mod error;
pub mod headers;
pub mod http;
mod index;
pub mod istio;
pub mod jwt;
mod model;
pub mod peer;

pub use error::{Error, FieldError};
pub use index::{Decision, PolicyIndex, WorkloadRef};
pub use model::{
    Action, Condition, Connection, Match, Operation, Policy, Rule, Scope, Source, StringMatch,
    TargetRef,
};
