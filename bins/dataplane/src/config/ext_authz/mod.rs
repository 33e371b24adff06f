//! Istio's mesh `extensionProviders` (`MeshConfig`), the external authorizers `CUSTOM`
//! `AuthorizationPolicy`s name: parsed, validated and indexed by name into
//! [`ExtAuthzProviders`] for the L7 layer (`mesh_l7::layer::ext_authz`) and the gRPC client
//! (`proxy::ext_authz`).
//!
//! Supported: `envoyExtAuthzGrpc` (`service`, `port`, `timeout`, `failOpen`,
//! `statusOnError`, `clearRouteCache: true`). Rejected by name: `envoyExtAuthzHttp` and every
//! other provider kind, `includeRequestBodyInCheck`, `clearRouteCache: false`, and the HTTP
//! provider's header fields given to a gRPC provider (a gRPC authorizer names the headers in
//! its `CheckResponse`). A `CUSTOM` policy naming a provider that does not exist is an error
//! at its location (and is denied at run time, fail closed).

mod compile;
mod types;

pub(crate) use compile::index_resources;
pub use types::{DEFAULT_TIMEOUT, ExtAuthzProvider, ExtAuthzProviders, ExtensionProviderSpec};

#[cfg(test)]
mod tests;
