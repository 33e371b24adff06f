//! Who may resolve and reach a service (the workload API's `Service.visibility`, Istio 1.31): a
//! leaf module, read by the VIP lookup ([`super::netindex`]) and the DNS proxy.

/// Istio's `Service.Visibility`: which clients a service is visible to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Visibility {
    /// Visible to every client (the default, and every file-defined service).
    #[default]
    Public,
    /// Visible only to clients in the service's own namespace: from another namespace its VIP
    /// is not a service and its host name does not resolve.
    Namespace,
}

impl Visibility {
    /// Whether a client in `client_namespace` may see a service of `service_namespace` with
    /// this visibility (Istio's ztunnel `Service::visible_to`).
    pub fn visible_to(self, service_namespace: &str, client_namespace: &str) -> bool {
        self != Visibility::Namespace || service_namespace == client_namespace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_visibility_is_the_service_namespace_only() {
        assert!(Visibility::Public.visible_to("a", "b"));
        assert!(Visibility::Namespace.visible_to("a", "a"));
        assert!(!Visibility::Namespace.visible_to("a", "b"));
        assert!(!Visibility::Namespace.visible_to("a", ""));
    }
}
