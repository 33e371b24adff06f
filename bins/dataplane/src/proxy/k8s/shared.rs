//! What the watches and the publisher of the Kubernetes source share: a leaf module of
//! `proxy::k8s`.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::super::runtime::Inner;
use crate::config::k8s::KubeObjects;

/// What the watches and the publisher share.
pub(super) struct Shared {
    pub(super) objects: Mutex<KubeObjects>,
    /// An object changed (or a list completed): publish after the debounce window.
    pub(super) changed: Notify,
    /// The first watches not yet listed once; nothing is published before they are.
    pub(super) unsynced: AtomicUsize,
    /// The object cap was reached and said so once at warn level (the rest at debug: a
    /// flood of objects must not flood the log).
    pub(super) cap_warned: AtomicBool,
    pub(super) inner: Arc<Inner>,
}
