//! The rate limit layer under paused time: exact 200 / 429 counts, Envoy's headers, per-route
//! and global answers (OK, OVER_LIMIT, error with fail-open and fail-closed).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use mesh_telemetry::metrics::ResponseFlags;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::layer::Meta;
use crate::ratelimit::{Context, RateLimitRules};

type Resp = Response<Body<http_body_util::Empty<Bytes>>>;

#[derive(Clone)]
struct Src {
    policy: Option<Arc<RateLimitPolicy>>,
    answer: Result<GlobalAnswer, GlobalError>,
    delay: Duration,
}

impl RateLimitSource for Src {
    type Check = Pin<Box<dyn Future<Output = Result<GlobalAnswer, GlobalError>> + Send>>;

    fn with_policy<T>(&self, f: impl FnOnce(&RateLimitPolicy, VhostFacts<'_>) -> T) -> Option<T> {
        let p = self.policy.as_ref()?;
        Some(f(
            p,
            VhostFacts {
                host: Some("productpage"),
                port: 9080,
            },
        ))
    }

    fn client(&self) -> Option<IpAddr> {
        Some([10, 0, 0, 1].into())
    }

    fn check(&self, _: &GlobalFilter, _: Vec<Descriptor>) -> Self::Check {
        let (a, d) = (self.answer.clone(), self.delay);
        Box::pin(async move {
            tokio::time::sleep(d).await;
            a
        })
    }
}

fn policy(json: &str, ctx: Context) -> Arc<RateLimitPolicy> {
    let spec = serde_json::from_str(json).unwrap();
    let rules = RateLimitRules::compile(&spec).unwrap();
    Arc::new(RateLimitPolicy::build([&rules], ctx, tokio::time::Instant::now()).unwrap())
}

fn ok_upstream() -> impl Service<
    UpstreamRequest<()>,
    Response = Resp,
    Error = Infallible,
    Future = impl Future<Output = Result<Resp, Infallible>> + Send,
> + Clone {
    service_fn(|_: UpstreamRequest<()>| async {
        Ok(Response::new(Body::Upstream(http_body_util::Empty::new())))
    })
}

fn req() -> UpstreamRequest<()> {
    UpstreamRequest {
        target: Target::Direct,
        request: Request::get("/productpage").body(()).unwrap(),
    }
}

async fn send(
    svc: &mut (impl Service<UpstreamRequest<()>, Response = Resp, Error = Infallible> + Clone),
) -> Resp {
    svc.ready().await.unwrap().call(req()).await.unwrap()
}

fn flags(r: &Resp) -> ResponseFlags {
    r.extensions()
        .get::<Meta>()
        .map_or(ResponseFlags::None, |m| m.flags)
}

// Istio task "Enabling Rate Limits using Envoy", local: 4 tokens per 60s; Envoy local rate
// limit docs: 429 `local_rate_limited`, `x-envoy-ratelimited`, and with
// enable_x_ratelimit_headers DRAFT_VERSION_03 the x-ratelimit-* headers on every response.
#[tokio::test(start_paused = true)]
async fn local_bucket_exact_counts_and_headers() {
    let src = Src {
        policy: Some(policy(
            crate::ratelimit::tests::LOCAL,
            Context::SidecarInbound,
        )),
        answer: Ok(GlobalAnswer::Ok(vec![])),
        delay: Duration::ZERO,
    };
    let mut svc = RateLimitLayer::new(src).layer(ok_upstream());
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(send(&mut svc).await.status().as_u16());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 4);
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 6);
    tokio::time::advance(Duration::from_secs(30)).await;
    let r = send(&mut svc).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(flags(&r), ResponseFlags::RateLimited);
    let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("x-envoy-ratelimited").as_deref(), Some("true"));
    assert_eq!(h("x-local-rate-limit").as_deref(), Some("true"));
    assert_eq!(
        (
            h("x-ratelimit-limit").as_deref(),
            h("x-ratelimit-remaining").as_deref(),
            h("x-ratelimit-reset").as_deref()
        ),
        (Some("4"), Some("0"), Some("30"))
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    let r = send(&mut svc).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "3");
    assert_eq!(r.headers()["x-ratelimit-reset"], "60");
}

#[tokio::test(start_paused = true)]
async fn no_policy_passes_untouched() {
    let src = Src {
        policy: None,
        answer: Err(GlobalError::Timeout),
        delay: Duration::ZERO,
    };
    let mut svc = RateLimitLayer::new(src).layer(ok_upstream());
    for _ in 0..100 {
        let r = send(&mut svc).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().is_empty());
    }
}

fn global_src(answer: Result<GlobalAnswer, GlobalError>, deny: bool, delay: Duration) -> Src {
    let json = crate::ratelimit::tests::GLOBAL_JSON.replace(
        "\"failure_mode_deny\": true",
        &format!("\"failure_mode_deny\": {deny}"),
    );
    Src {
        policy: Some(policy(&json, Context::Gateway)),
        answer,
        delay,
    }
}

// Envoy ratelimit filter: OVER_LIMIT → 429 (`RL`, x-envoy-ratelimited) with the service's
// response_headers_to_add; OK → forwarded with them; an error or timeout → forwarded
// (failure_mode_deny false) or 500 `RLSE` (true).
#[tokio::test(start_paused = true)]
async fn global_answers_and_failure_modes() {
    let hdr = vec![(
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderValue::from_static("0"),
    )];
    let mut svc = RateLimitLayer::new(global_src(
        Ok(GlobalAnswer::OverLimit(hdr.clone())),
        true,
        Duration::ZERO,
    ))
    .layer(ok_upstream());
    let r = send(&mut svc).await;
    assert_eq!(
        (r.status(), flags(&r)),
        (StatusCode::TOO_MANY_REQUESTS, ResponseFlags::RateLimited)
    );
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(r.headers()["x-envoy-ratelimited"], "true");
    let mut svc = RateLimitLayer::new(global_src(Ok(GlobalAnswer::Ok(hdr)), true, Duration::ZERO))
        .layer(ok_upstream());
    let r = send(&mut svc).await;
    assert_eq!(
        (
            r.status(),
            r.headers()["x-ratelimit-remaining"].to_str().unwrap()
        ),
        (StatusCode::OK, "0")
    );
    let failed = Err(GlobalError::Failed("unavailable".into()));
    let mut svc =
        RateLimitLayer::new(global_src(failed.clone(), true, Duration::ZERO)).layer(ok_upstream());
    let r = send(&mut svc).await;
    assert_eq!(
        (r.status(), flags(&r)),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            ResponseFlags::RateLimitServiceError
        )
    );
    let mut svc =
        RateLimitLayer::new(global_src(failed, false, Duration::ZERO)).layer(ok_upstream());
    assert_eq!(send(&mut svc).await.status(), StatusCode::OK);
    // A service slower than the filter's timeout (10s here) is an error: fail closed / open.
    let slow = Ok(GlobalAnswer::OverLimit(vec![]));
    let mut svc = RateLimitLayer::new(global_src(slow.clone(), true, Duration::from_secs(11)))
        .layer(ok_upstream());
    let start = tokio::time::Instant::now();
    let r = send(&mut svc).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let mut svc =
        RateLimitLayer::new(global_src(slow, false, Duration::from_secs(11))).layer(ok_upstream());
    assert_eq!(send(&mut svc).await.status(), StatusCode::OK);
}
