//! An `EnvoyFilter` spec checked into [`RateLimitRules`] (patch by patch, each problem named
//! with its field path), and a proxy's rules made into its [`RateLimitPolicy`] with fresh
//! buckets.

use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::descriptor::Recipe;
use super::envoy::*;
use super::fields::*;
use super::policy::*;
use super::spec::*;
use crate::FieldError;
use crate::resilience::ratelimit::{BucketConfig, BucketMap};

/// Where a proxy's HTTP or TCP path sits (Istio's `match.context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// A sidecar's inbound (server side).
    SidecarInbound,
    /// A sidecar's outbound (client side).
    SidecarOutbound,
    /// A waypoint (Istio's `GATEWAY`).
    Gateway,
}

/// A configured descriptor's entries (a value `None`: any value).
type Entries = Vec<(String, Option<String>)>;

/// A local limiter's checked config (buckets made per proxy).
#[derive(Debug, Clone)]
pub(crate) struct LocalTemplate {
    name: String,
    bucket: Option<BucketConfig>,
    enabled: Fraction,
    enforced: Fraction,
    headers: Vec<(HeaderName, HeaderValue, Append)>,
    x_headers: bool,
    descriptors: Vec<(Entries, BucketConfig)>,
    max_dynamic: usize,
    status: StatusCode,
}

#[derive(Debug, Clone)]
enum Rule {
    LocalFilter(LocalTemplate),
    GlobalFilter(Arc<GlobalFilter>),
    Route {
        port: Option<u16>,
        vhost: VhostMatch,
        route: Option<Option<String>>,
        rate_limits: Vec<Recipe>,
        local: Option<LocalTemplate>,
    },
    Connections {
        name: String,
        cfg: BucketConfig,
    },
}

/// One `EnvoyFilter`'s checked patches, by context.
#[derive(Debug, Clone, Default)]
pub struct RateLimitRules {
    rules: Vec<(Option<Context>, Rule)>,
}

impl RateLimitRules {
    /// Checks `spec`'s patches (not its selection, which the proxy resolves).
    pub fn compile(spec: &EnvoyFilterSpec) -> Result<RateLimitRules, Vec<FieldError>> {
        let mut errs = Vec::new();
        if spec.priority.is_some() {
            err(
                &mut errs,
                "spec.priority",
                "not supported: patches apply in a fixed order",
            );
        }
        if spec.config_patches.is_empty() {
            err(&mut errs, "spec.configPatches", "at least one patch");
        }
        let mut rules = Vec::new();
        for (i, p) in spec.config_patches.iter().enumerate() {
            if let Some(r) = patch(p, &format!("spec.configPatches[{i}]"), &mut errs) {
                rules.push(r);
            }
        }
        let globals = rules
            .iter()
            .filter(|(_, r)| matches!(r, Rule::GlobalFilter(_)))
            .count();
        if globals > 1 {
            err(
                &mut errs,
                "spec.configPatches",
                "at most one envoy.filters.http.ratelimit filter",
            );
        }
        if errs.is_empty() {
            Ok(RateLimitRules { rules })
        } else {
            Err(errs)
        }
    }

    /// Whether it has a patch for `ctx`.
    pub fn applies_to(&self, ctx: Context) -> bool {
        self.rules.iter().any(|(c, _)| c.is_none_or(|c| c == ctx))
    }
}

impl RateLimitPolicy {
    /// The policy of a proxy at `ctx` with the patches of `rules` (in order), buckets full at
    /// `now`; `None` when no patch applies.
    pub fn build<'a>(
        rules: impl IntoIterator<Item = &'a RateLimitRules>,
        ctx: Context,
        now: Instant,
    ) -> Option<RateLimitPolicy> {
        let mut p = RateLimitPolicy::default();
        let mut any = false;
        for (_, r) in rules
            .into_iter()
            .flat_map(|r| &r.rules)
            .filter(|(c, _)| c.is_none_or(|c| c == ctx))
        {
            any = true;
            match r {
                Rule::LocalFilter(t) => {
                    p.local_filter = true;
                    p.local.push(t.make(now));
                }
                // The first global filter wins (one per proxy, as one filter chain).
                Rule::GlobalFilter(g) => {
                    p.global.get_or_insert_with(|| g.clone());
                }
                Rule::Route {
                    port,
                    vhost,
                    route,
                    rate_limits,
                    local,
                } => p.patches.push(RoutePatch {
                    port: *port,
                    vhost: vhost.clone(),
                    route: route.clone(),
                    rate_limits: rate_limits.clone(),
                    local: local.as_ref().map(|t| t.make(now)),
                }),
                Rule::Connections { name, cfg } => {
                    p.connections.get_or_insert_with(|| ConnectionLimit {
                        name: name.clone(),
                        bucket: new_bucket(*cfg, now),
                    });
                }
            }
        }
        // A filter with no default bucket that a route enables per route: the filter-level
        // instance only passes requests (Envoy: disabled unless the route configures it).
        any.then_some(p)
    }
}

impl LocalTemplate {
    fn make(&self, now: Instant) -> LocalLimit {
        let descriptors = self
            .descriptors
            .iter()
            .map(|(entries, cfg)| LocalDescriptor {
                entries: entries.clone(),
                buckets: if entries.iter().any(|(_, v)| v.is_none()) {
                    Buckets::PerValue(Mutex::new(BucketMap::new(*cfg, self.max_dynamic)))
                } else {
                    Buckets::One(new_bucket(*cfg, now))
                },
            });
        LocalLimit {
            name: self.name.clone(),
            bucket: self.bucket.map(|b| new_bucket(b, now)),
            enabled: self.enabled,
            enforced: self.enforced,
            headers: self.headers.clone(),
            x_headers: self.x_headers,
            descriptors: descriptors.collect(),
            status: self.status,
        }
    }
}

fn context(m: Option<&MatchSpec>, at: &str, errs: &mut Vec<FieldError>) -> Option<Option<Context>> {
    Some(
        match m.and_then(|m| m.context.as_deref()).unwrap_or("ANY") {
            "ANY" => None,
            "SIDECAR_INBOUND" => Some(Context::SidecarInbound),
            "SIDECAR_OUTBOUND" => Some(Context::SidecarOutbound),
            "GATEWAY" => Some(Context::Gateway),
            c => {
                err(
                    errs,
                    format!("{at}.match.context"),
                    format!("{c:?} is not ANY, SIDECAR_INBOUND, SIDECAR_OUTBOUND or GATEWAY"),
                );
                return None;
            }
        },
    )
}

fn patch(p: &PatchSpec, at: &str, errs: &mut Vec<FieldError>) -> Option<(Option<Context>, Rule)> {
    let m = p.matches.as_ref();
    if let Some(m) = m {
        reject(
            errs,
            &format!("{at}.match"),
            &[
                ("proxy", m.proxy.is_some()),
                ("cluster", m.cluster.is_some()),
            ],
            "not supported by this data plane",
        );
    }
    let ctx = context(m, at, errs)?;
    let Some(body) = &p.patch else {
        err(errs, format!("{at}.patch"), "missing");
        return None;
    };
    reject(
        errs,
        &format!("{at}.patch"),
        &[("filterClass", body.filter_class.is_some())],
        "not supported by this data plane",
    );
    let op = body.operation.as_deref().unwrap_or("");
    let Some(value) = &body.value else {
        err(errs, format!("{at}.patch.value"), "missing");
        return None;
    };
    let vat = format!("{at}.patch.value");
    let apply_to = p.apply_to.as_deref().unwrap_or("");
    let rule = match apply_to {
        "HTTP_FILTER" | "NETWORK_FILTER" => {
            let http = apply_to == "HTTP_FILTER";
            filter_match(m, http, at, errs);
            if !["INSERT_BEFORE", "INSERT_FIRST"].contains(&op) {
                err(
                    errs,
                    format!("{at}.patch.operation"),
                    format!(
                        "{op:?}: a rate limit filter is inserted with INSERT_BEFORE or INSERT_FIRST"
                    ),
                );
            }
            filter(typed(value, &vat, errs)?, http, &vat, errs)?
        }
        "HTTP_ROUTE" | "VIRTUAL_HOST" => {
            if op != "MERGE" {
                err(
                    errs,
                    format!("{at}.patch.operation"),
                    format!("{op:?}: route and virtual host patches are MERGE"),
                );
            }
            let (port, vhost, route) = route_match(m, apply_to == "HTTP_ROUTE", at, errs)?;
            let (rls, per_filter) = if apply_to == "HTTP_ROUTE" {
                let v: RouteValue = typed(value, &vat, errs)?;
                (
                    v.route.map(|r| r.rate_limits).unwrap_or_default(),
                    v.typed_per_filter_config,
                )
            } else {
                let v: VirtualHostValue = typed(value, &vat, errs)?;
                (v.rate_limits, v.typed_per_filter_config)
            };
            let rl_at = if apply_to == "HTTP_ROUTE" {
                format!("{vat}.route.rate_limits")
            } else {
                format!("{vat}.rate_limits")
            };
            let rate_limits = recipes(&rls, &rl_at, errs);
            let mut local = None;
            for (name, cfg) in &per_filter {
                let fat = format!("{vat}.typed_per_filter_config.{name}");
                if name != "envoy.filters.http.local_ratelimit" {
                    err(
                        errs,
                        fat,
                        "only envoy.filters.http.local_ratelimit has a per-route config here",
                    );
                    continue;
                }
                let (ty, fields, fat) = unwrap_typed(cfg, &fat, errs)?;
                if ty != LOCAL_HTTP_TYPE {
                    err(
                        errs,
                        format!("{fat}.@type"),
                        format!("{ty:?} is not {LOCAL_HTTP_TYPE}"),
                    );
                    continue;
                }
                local = local_template(&typed(&fields, &fat, errs)?, &fat, errs);
            }
            Rule::Route {
                port,
                vhost,
                route,
                rate_limits,
                local,
            }
        }
        a => {
            err(
                errs,
                format!("{at}.applyTo"),
                format!(
                    "{a:?} is not supported: only HTTP_FILTER, HTTP_ROUTE, VIRTUAL_HOST and NETWORK_FILTER patches of rate limit filters"
                ),
            );
            return None;
        }
    };
    Some((ctx, rule))
}

fn filter_match(m: Option<&MatchSpec>, http: bool, at: &str, errs: &mut Vec<FieldError>) {
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

type RouteSel = (Option<u16>, VhostMatch, Option<Option<String>>);

fn route_match(
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

fn filter(v: FilterValue, http: bool, at: &str, errs: &mut Vec<FieldError>) -> Option<Rule> {
    let want: &[&str] = if http {
        &[
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.ratelimit",
        ]
    } else {
        &["envoy.filters.network.local_ratelimit"]
    };
    if !want.contains(&v.name.as_str()) {
        err(
            errs,
            format!("{at}.name"),
            format!("{:?}: only {want:?} filters are supported", v.name),
        );
        return None;
    }
    let Some(tc) = &v.typed_config else {
        err(errs, format!("{at}.typed_config"), "missing");
        return None;
    };
    let (ty, fields, fat) = unwrap_typed(tc, &format!("{at}.typed_config"), errs)?;
    let expect = match v.name.as_str() {
        "envoy.filters.http.local_ratelimit" => LOCAL_HTTP_TYPE,
        "envoy.filters.http.ratelimit" => GLOBAL_HTTP_TYPE,
        _ => LOCAL_NET_TYPE,
    };
    if ty != expect {
        err(
            errs,
            format!("{fat}.@type"),
            format!("{ty:?} is not {expect}"),
        );
        return None;
    }
    match expect {
        LOCAL_HTTP_TYPE => Some(Rule::LocalFilter(local_template(
            &typed(&fields, &fat, errs)?,
            &fat,
            errs,
        )?)),
        GLOBAL_HTTP_TYPE => Some(Rule::GlobalFilter(global(
            &typed(&fields, &fat, errs)?,
            &fat,
            errs,
        )?)),
        _ => {
            let n: NetworkLocalRateLimitSpec = typed(&fields, &fat, errs)?;
            reject(
                errs,
                &fat,
                &[
                    ("runtime_enabled", n.runtime_enabled.is_some()),
                    ("share_key", n.share_key.is_some()),
                ],
                "not supported by this data plane",
            );
            let cfg = bucket(&n.token_bucket, &format!("{fat}.token_bucket"), errs)?;
            Some(Rule::Connections {
                name: n.stat_prefix,
                cfg,
            })
        }
    }
}

fn local_template(
    l: &LocalRateLimitSpec,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<LocalTemplate> {
    let n = errs.len();
    reject(
        errs,
        at,
        &[
            (
                "request_headers_to_add_when_not_enforced",
                l.request_headers_to_add_when_not_enforced.is_some(),
            ),
            (
                "local_rate_limit_per_downstream_connection",
                l.local_rate_limit_per_downstream_connection.is_some(),
            ),
            (
                "always_consume_default_token_bucket",
                l.always_consume_default_token_bucket.is_some(),
            ),
            ("stage", l.stage.is_some()),
            (
                "rate_limited_as_resource_exhausted",
                l.rate_limited_as_resource_exhausted.is_some(),
            ),
            (
                "local_cluster_rate_limit",
                l.local_cluster_rate_limit.is_some(),
            ),
            ("vh_rate_limits", l.vh_rate_limits.is_some()),
            ("rate_limits", l.rate_limits.is_some()),
        ],
        "not supported by this data plane",
    );
    let b = l
        .token_bucket
        .as_ref()
        .and_then(|b| bucket(b, &format!("{at}.token_bucket"), errs));
    if !l.descriptors.is_empty() && l.token_bucket.is_none() {
        // Envoy requires the default bucket beside descriptors.
        err(
            errs,
            format!("{at}.token_bucket"),
            "required when descriptors are given",
        );
    }
    let mut descriptors = Vec::new();
    for (i, d) in l.descriptors.iter().enumerate() {
        let dat = format!("{at}.descriptors[{i}]");
        if d.entries.is_empty() {
            err(errs, format!("{dat}.entries"), "at least one entry");
        }
        let entries = d
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        if let Some(cfg) = bucket(&d.token_bucket, &format!("{dat}.token_bucket"), errs) {
            descriptors.push((entries, cfg));
        }
    }
    let max_dynamic = match l.max_dynamic_descriptors {
        None => DEFAULT_MAX_DYNAMIC,
        Some(m) if (1..=MAX_DYNAMIC).contains(&m) => m as usize,
        Some(_) => {
            err(
                errs,
                format!("{at}.max_dynamic_descriptors"),
                format!("must be 1..={MAX_DYNAMIC} (memory is bounded)"),
            );
            DEFAULT_MAX_DYNAMIC
        }
    };
    let t = LocalTemplate {
        name: l.stat_prefix.clone(),
        bucket: b,
        enabled: fraction(
            l.filter_enabled.as_ref(),
            &format!("{at}.filter_enabled"),
            errs,
        ),
        enforced: fraction(
            l.filter_enforced.as_ref(),
            &format!("{at}.filter_enforced"),
            errs,
        ),
        headers: headers(
            &l.response_headers_to_add,
            &format!("{at}.response_headers_to_add"),
            errs,
        ),
        x_headers: x_headers(
            l.enable_x_ratelimit_headers.as_deref(),
            &format!("{at}.enable_x_ratelimit_headers"),
            errs,
        ),
        descriptors,
        max_dynamic,
        status: status(l.status.as_ref(), &format!("{at}.status"), errs),
    };
    (errs.len() == n).then_some(t)
}
