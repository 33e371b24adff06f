//! `istio_build{component, tag} 1`: the gauge every Istio component exports so dashboards
//! can tell which versions run (istio/ztunnel `src/metrics/meta.rs`: component `ztunnel`,
//! `tag` the Istio version; Envoy-based proxies, waypoints and sidecars, report component
//! `proxy`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The labels of `istio_build`, named as Istio names them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: String,
    tag: String,
}

/// The Istio component name a proxy role reports in `istio_build`: `ztunnel` for the node
/// proxy, `proxy` for the roles Istio fills with Envoy (waypoint, sidecar).
pub fn istio_component(role: &str) -> &'static str {
    match role {
        "ztunnel" => "ztunnel",
        _ => "proxy",
    }
}

/// Registers `istio_build{component="<component>",tag="<tag>"} 1` in `registry` (one
/// series, set once).
pub fn register(registry: &mut Registry, component: &str, tag: &str) {
    let family: Family<BuildLabels, Gauge> = Family::default();
    family
        .get_or_create(&BuildLabels {
            component: component.to_owned(),
            tag: tag.to_owned(),
        })
        .set(1);
    registry.sub_registry_with_prefix("istio").register(
        "build",
        "Istio component build info",
        family,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_line_as_istio() {
        // Same name and label names as istio/ztunnel `src/metrics/meta.rs` (`IstioBuildLabel`).
        let mut r = Registry::default();
        register(&mut r, istio_component("ztunnel"), "1.29.0");
        let text = crate::encode(&r);
        assert!(
            text.contains("istio_build{component=\"ztunnel\",tag=\"1.29.0\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE istio_build gauge"), "{text}");
    }

    #[test]
    fn envoy_roles_report_proxy() {
        assert_eq!(istio_component("waypoint"), "proxy");
        assert_eq!(istio_component("sidecar"), "proxy");
        assert_eq!(istio_component("ztunnel"), "ztunnel");
    }
}
