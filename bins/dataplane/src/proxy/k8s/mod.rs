//! The Kubernetes source of a waypoint's or sidecar's L7 resources (`--kube`): the kinds of
//! [`crate::config::k8s::KUBE_KINDS`] watched with the proxy's own service account in the
//! namespaces that concern it, checked object by object with the L7 file's types, and merged
//! with istiod's workload API in the one assembler. Read only: nothing is written to the API
//! server (no status). The last good objects keep serving while the API server errs or is
//! away; a burst of changes rebuilds once per debounce window.

mod body;
mod client;
mod settings;
mod shared;
mod source;
mod watch;

pub use self::client::kube_client;
pub use self::settings::{KubeSettings, KubeSource, L7Source};
pub use crate::error::KubeError;
