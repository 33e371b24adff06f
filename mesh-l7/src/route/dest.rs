//! The compiled destination of a route and its header operations: a leaf module, shared by
//! the route table and the resilience modules (mirrors copy to a [`Destination`]).

use http::{HeaderMap, HeaderName, HeaderValue};

/// Header operations: `set` replaces, `add` appends, `remove` deletes.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub(super) set: Vec<(HeaderName, HeaderValue)>,
    pub(super) add: Vec<(HeaderName, HeaderValue)>,
    pub(super) remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Operations from their parts.
    pub(crate) fn from_parts(
        set: Vec<(HeaderName, HeaderValue)>,
        add: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
    ) -> HeaderOps {
        HeaderOps { set, add, remove }
    }

    /// Applies the operations to `h`.
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Request and response header operations.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// On the request, before forwarding.
    pub request: HeaderOps,
    /// On the response, before returning it.
    pub response: HeaderOps,
}

/// A weighted destination.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Service host.
    pub host: String,
    /// Subset (DestinationRule).
    pub subset: Option<String>,
    /// Service port.
    pub port: Option<u16>,
    /// Relative weight.
    pub weight: u32,
    /// Its header operations.
    pub headers: HeaderRules,
}
