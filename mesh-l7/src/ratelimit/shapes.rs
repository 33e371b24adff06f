//! Where a patch applies: the listener match of filter patches and the route
//! configuration match (virtual host name, route name, port) of route patches.

use super::fields::{err, reject};
use super::parts::VhostMatch;
use super::spec::MatchSpec;
use mesh_authz::istio::FieldError;

pub(super) fn filter_match(
    m: Option<&MatchSpec>,
    http: bool,
    at: &str,
    errs: &mut Vec<FieldError>,
) {
    let Some(l) = m.and_then(|m| m.listener.as_ref()) else {
        return;
    };
    let lat = format!("{at}.match.listener");
    let no = "not supported: rate limit filters apply to every listener of the proxy";
    reject(
        errs,
        &lat,
        &[
            ("name", l.name.is_some()),
            ("portName", l.port_name.is_some()),
            ("listenerFilter", l.listener_filter.is_some()),
            ("portNumber", l.port_number.is_some()),
        ],
        no,
    );
    let Some(fc) = &l.filter_chain else { return };
    let fat = format!("{lat}.filterChain");
    reject(
        errs,
        &fat,
        &[
            ("name", fc.name.is_some()),
            ("sni", fc.sni.is_some()),
            ("transportProtocol", fc.transport_protocol.is_some()),
            ("applicationProtocols", fc.application_protocols.is_some()),
            ("destinationPort", fc.destination_port.is_some()),
        ],
        no,
    );
    let Some(f) = &fc.filter else { return };
    let ok: &[&str] = if http {
        &["envoy.filters.network.http_connection_manager"]
    } else {
        &[
            "envoy.filters.network.tcp_proxy",
            "envoy.filters.network.http_connection_manager",
        ]
    };
    if let Some(n) = f.name.as_deref().filter(|n| !ok.contains(n)) {
        err(
            errs,
            format!("{fat}.filter.name"),
            format!("{n:?} is not one of {ok:?}"),
        );
    }
    let sub = f.sub_filter.as_ref().and_then(|s| s.name.as_deref());
    if let Some(s) = sub.filter(|s| !http || *s != "envoy.filters.http.router") {
        err(
            errs,
            format!("{fat}.filter.subFilter.name"),
            format!("{s:?}: only envoy.filters.http.router (the filter goes before it)"),
        );
    }
}

pub(super) type RouteSel = (Option<u16>, VhostMatch, Option<Option<String>>);

pub(super) fn route_match(
    m: Option<&MatchSpec>,
    route: bool,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<RouteSel> {
    let rc = m.and_then(|m| m.route_configuration.as_ref());
    let rat = format!("{at}.match.routeConfiguration");
    let no = "not supported: match by vhost name, route name or portNumber";
    let mut port = None;
    if let Some(rc) = rc {
        reject(
            errs,
            &rat,
            &[
                ("portName", rc.port_name.is_some()),
                ("gateway", rc.gateway.is_some()),
                ("name", rc.name.is_some()),
            ],
            no,
        );
        port = crate::route::fields::port(rc.port_number, || format!("{rat}.portNumber"), errs);
    }
    let vh = rc.and_then(|r| r.vhost.as_ref());
    let vhost = match vh.and_then(|v| v.name.as_deref()).filter(|n| !n.is_empty()) {
        None => VhostMatch::Any,
        Some(n) => match vhost_name(n) {
            Some(v) => v,
            None => {
                err(
                    errs,
                    format!("{rat}.vhost.name"),
                    format!("{n:?} is not inbound|http|<port> or <host>:<port>"),
                );
                return None;
            }
        },
    };
    let r = vh.and_then(|v| v.route.as_ref());
    if !route {
        if r.is_some() {
            err(
                errs,
                format!("{rat}.vhost.route"),
                "a VIRTUAL_HOST patch has no route match; use HTTP_ROUTE",
            );
        }
        return Some((port, vhost, None));
    }
    match r.and_then(|r| r.action.as_deref()).unwrap_or("ANY") {
        "ANY" | "ROUTE" => {}
        a => err(
            errs,
            format!("{rat}.vhost.route.action"),
            format!("{a:?}: only ANY or ROUTE reach a rate limit"),
        ),
    }
    Some((port, vhost, Some(r.and_then(|r| r.name.clone()))))
}

fn vhost_name(n: &str) -> Option<VhostMatch> {
    if let Some(p) = n.strip_prefix("inbound|http|") {
        return p.parse().ok().map(VhostMatch::Inbound);
    }
    let (h, p) = n.rsplit_once(':')?;
    let p = p.parse().ok()?;
    Some(VhostMatch::Host(
        (h != "*").then(|| h.to_ascii_lowercase()),
        p,
    ))
}
