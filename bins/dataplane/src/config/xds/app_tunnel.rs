//! `Workload.application_tunnel` (Istio 1.31) → the state's [`AppTunnel`]: `NONE` (or unset)
//! is no tunnel; `PROXY` makes the destination's ztunnel write a PROXY v2 header before the
//! bytes (istio/ztunnel `src/proxy/inbound.rs`), on `port` when set. An unknown protocol, a
//! port that is not one, or a tunnel on a sidecar's own workload (its HTTP path does not write
//! the header) is rejected by name.

use mesh_xds::pb::workload as wl;

use super::super::app_tunnel::AppTunnel;
use super::store::Local;

/// The workload's application tunnel, checked.
pub(super) fn convert(w: &wl::Workload, local: &Local) -> Result<Option<AppTunnel>, String> {
    let Some(t) = &w.application_tunnel else {
        return Ok(None);
    };
    match wl::application_tunnel::Protocol::try_from(t.protocol) {
        Ok(wl::application_tunnel::Protocol::None) => return Ok(None),
        Ok(wl::application_tunnel::Protocol::Proxy) => {}
        Err(_) => {
            return Err(format!(
                "application_tunnel.protocol: unknown value {} (NONE or PROXY)",
                t.protocol
            ));
        }
    }
    if let Local::OneWorkload { workload } = local
        && *workload == format!("{}/{}", w.namespace, w.name)
    {
        return Err(
            "unsupported Istio field `application_tunnel` on a sidecar's own workload: only a ztunnel delivers PROXY tunnels"
                .into(),
        );
    }
    let port = match t.port {
        0 => None,
        p => Some(
            u16::try_from(p).map_err(|_| format!("application_tunnel.port: {p} is not a port"))?,
        ),
    };
    Ok(Some(AppTunnel { port }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn wk(protocol: i32, port: u32) -> wl::Workload {
        wl::Workload {
            name: "w".into(),
            namespace: "ns".into(),
            application_tunnel: Some(wl::ApplicationTunnel { protocol, port }),
            ..Default::default()
        }
    }

    // Istio's proto: `NONE` copies bytes unmodified; `PROXY` prepends the header; `port`
    // "optional: if set, traffic should be sent to this port after the last zTunnel hop".
    #[test]
    fn converts_and_rejects_by_name() {
        let node = Local::NodeWorkloads;
        assert_eq!(convert(&wk(0, 15088), &node).unwrap(), None);
        assert_eq!(
            convert(&wk(1, 0), &node).unwrap(),
            Some(AppTunnel { port: None })
        );
        assert_eq!(
            convert(&wk(1, 15088), &node).unwrap(),
            Some(AppTunnel { port: Some(15088) })
        );
        let e = convert(&wk(7, 0), &node).unwrap_err();
        assert!(
            e.contains("application_tunnel.protocol: unknown value 7"),
            "{e}"
        );
        let e = convert(&wk(1, 70_000), &node).unwrap_err();
        assert!(e.contains("application_tunnel.port: 70000"), "{e}");
        let sidecar = Local::OneWorkload {
            workload: "ns/w".into(),
        };
        let e = convert(&wk(1, 0), &sidecar).unwrap_err();
        assert!(
            e.contains("`application_tunnel` on a sidecar's own workload"),
            "{e}"
        );
        assert_eq!(convert(&wk(0, 0), &sidecar).unwrap(), None);
    }
}
