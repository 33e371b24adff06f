//! An `EnvoyFilter` spec checked into [`RateLimitRules`] (patch by patch, each problem named
//! with its field path), and a proxy's rules made into its [`RateLimitPolicy`] with fresh
//! buckets.

use std::sync::Mutex;

use tokio::time::Instant;

use super::actions::recipes;
use super::descriptor::Recipe;
use super::envoy::*;
use super::fields::*;
use super::filters::{filter, local_template};
use super::policy::*;
use super::rules::{Context, LocalTemplate, RateLimitRules, Rule};
use super::shapes::{filter_match, route_match};
use super::spec::*;
use crate::resilience::ratelimit::BucketMap;
use mesh_authz::istio::FieldError;

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
        let rules: Vec<&RateLimitRules> = rules.into_iter().collect();
        p.origin = (rules.iter().map(|r| (*r).clone()).collect(), Some(ctx));
        for (_, r) in rules
            .iter()
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
        // A route's local config takes effect even when no EnvoyFilter of this proxy inserts
        // the filter itself (Envoy would ignore it; here nothing written is ignored). The
        // filter-level instances, if any, only pass requests without a bucket of their own.
        if p.patches.iter().any(|r| r.local.is_some()) {
            p.local_filter = true;
        }
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
            if !http && ctx != Some(Context::SidecarInbound) {
                // Connections are admitted (and limited) at the workload's inbound only.
                let why = "a connection rate limit applies at SIDECAR_INBOUND only";
                err(errs, format!("{at}.match.context"), why);
            }
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
            let (rate_limits, local) = route_value(value, apply_to == "HTTP_ROUTE", &vat, errs)?;
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

/// A route or virtual host patch's value: its `rate_limits` and its per-route local config.
fn route_value(
    value: &serde_json::Value,
    route: bool,
    vat: &str,
    errs: &mut Vec<FieldError>,
) -> Option<(Vec<Recipe>, Option<LocalTemplate>)> {
    let (rls, per_filter, rl_at) = if route {
        let v: RouteValue = typed(value, vat, errs)?;
        let rls = v.route.map(|r| r.rate_limits).unwrap_or_default();
        (
            rls,
            v.typed_per_filter_config,
            format!("{vat}.route.rate_limits"),
        )
    } else {
        let v: VirtualHostValue = typed(value, vat, errs)?;
        (
            v.rate_limits,
            v.typed_per_filter_config,
            format!("{vat}.rate_limits"),
        )
    };
    let rate_limits = recipes(&rls, &rl_at, errs);
    let mut local = None;
    for (name, cfg) in &per_filter {
        let fat = format!("{vat}.typed_per_filter_config.{name}");
        if name != "envoy.filters.http.local_ratelimit" {
            let why = "only envoy.filters.http.local_ratelimit has a per-route config here";
            err(errs, fat, why);
            continue;
        }
        let (ty, fields, fat) = unwrap_typed(cfg, &fat, errs)?;
        if ty != LOCAL_HTTP_TYPE {
            let why = format!("{ty:?} is not {LOCAL_HTTP_TYPE}");
            err(errs, format!("{fat}.@type"), why);
            continue;
        }
        let spec: LocalRateLimitSpec = typed(&fields, &fat, errs)?;
        if spec.token_bucket.is_none() {
            // Envoy: "local rate limit token bucket must be set for per filter configs".
            err(
                errs,
                format!("{fat}.token_bucket"),
                "required in a per-route config",
            );
        }
        local = local_template(&spec, &fat, errs);
    }
    Some((rate_limits, local))
}
