//! The waypoint's Kubernetes source of L7 resources (`--kube`) against a fake API server
//! ([`mesh_tests::fake_kube`]): the real waypoint, ztunnels and a fake istiod, routes and
//! policies from VirtualServices and AuthorizationPolicies added, changed and deleted through
//! the API; list + watch with resourceVersions and bookmarks; a 410 Gone relists without losing
//! state; 500s and an outage keep the last good state; a bad object is rejected by name while
//! the others apply. Attacks: an object of a namespace that does not concern the waypoint, an
//! endless watch stream and a huge list. Loopback block 127.226.x.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kube_support;

use std::time::Duration;

use kube_support::{
    Block, Mesh, app, deny_admin, get, holds_for, mesh, route, status, until, wait_log,
};

/// The mesh of block `b` with the route of `/two` to `second` and the deny of `/admin` in the
/// API server from the start.
async fn seeded_mesh(b: Block) -> Mesh {
    mesh(
        b,
        &[
            ("virtualservices", route("server", "ns", "/two")),
            ("authorizationpolicies", deny_admin()),
        ],
    )
    .await
}

/// Waits until `/two` reaches `second` and `/admin` is denied: the first objects applied.
async fn first_state(b: Block) {
    until(b, "/two", "the VirtualService's route", |r| {
        app(r) == Some("second")
    })
    .await;
    until(b, "/admin", "the AuthorizationPolicy", |r| {
        status(r) == Some(403)
    })
    .await;
    assert_eq!(app(&get(b, "/").await), Some("server"));
}

/// A waypoint follows a VirtualService added, changed and deleted through the API; it only
/// reads (GET list and watch with bookmarks), only in its namespaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_follows_virtualservices_added_changed_deleted() {
    let m = mesh(Block(0), &[("authorizationpolicies", deny_admin())]).await;
    let b = m.b;
    let wp = m.waypoint(&[]);
    // No route yet: everything reaches `server`; the policy applies.
    until(b, "/admin", "the AuthorizationPolicy", |r| {
        status(r) == Some(403)
    })
    .await;
    assert_eq!(app(&get(b, "/two").await), Some("server"));
    // Added.
    m.kube.set("virtualservices", route("server", "ns", "/two"));
    first_state(b).await;
    // Changed.
    m.kube
        .set("virtualservices", route("server", "ns", "/three"));
    until(b, "/two", "the changed route", |r| app(r) == Some("server")).await;
    assert_eq!(app(&get(b, "/three").await), Some("second"));
    // Deleted.
    m.kube.delete("virtualservices", "ns", "server");
    until(b, "/three", "the route deleted", |r| {
        app(r) == Some("server")
    })
    .await;
    assert_eq!(status(&get(b, "/admin").await), Some(403));

    let reqs = m.kube.requests();
    assert!(reqs.iter().all(|r| r.method == "GET"), "{reqs:?}");
    // Watches resume from a resourceVersion and ask for bookmarks.
    assert!(
        reqs.iter().any(|r| r.uri.contains("watch=true")
            && r.uri.contains("resourceVersion=")
            && r.uri.contains("allowWatchBookmarks=true")
            && r.uri
                .contains("/apis/networking.istio.io/v1/namespaces/ns/virtualservices")),
        "{reqs:?}"
    );
    // Its own namespace and the root namespace, every kind; nothing else.
    for path in [
        "/apis/networking.istio.io/v1/namespaces/istio-system/virtualservices",
        "/apis/security.istio.io/v1/namespaces/ns/authorizationpolicies",
        "/apis/gateway.networking.k8s.io/v1/namespaces/ns/httproutes",
    ] {
        assert!(
            reqs.iter().any(|r| r.uri.starts_with(path)),
            "{path}: {reqs:?}"
        );
    }
    assert!(
        reqs.iter()
            .all(|r| r.uri.contains("/namespaces/ns/")
                || r.uri.contains("/namespaces/istio-system/")),
        "{reqs:?}"
    );
    drop(wp);
}

/// A 410 Gone (as an ERROR event, then as an HTTP 410) relists without losing state; 500s and
/// an outage keep the last good state; each time the next change applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_on_410_and_keeps_the_last_good_state_on_errors() {
    let m = seeded_mesh(Block(10)).await;
    let b = m.b;
    let wp = m.waypoint(&[]);
    first_state(b).await;
    let lists = || {
        m.kube
            .requests()
            .iter()
            .filter(|r| r.uri.contains("/ns/virtualservices?") && !r.uri.contains("watch=true"))
            .count()
    };

    // Kubernetes API concepts, "Efficient detection of changes": a watch from a compacted
    // resourceVersion fails with 410 Gone and the client must list again.
    for as_http in [false, true] {
        let before = lists();
        m.kube.expire(as_http);
        holds_for(b, Duration::from_millis(800), "second").await;
        // A change made after the compaction reaches the waypoint through the relist.
        m.kube
            .set("virtualservices", route("server", "ns", "/three"));
        until(b, "/two", "a change after the 410", |r| {
            app(r) == Some("server")
        })
        .await;
        assert!(
            lists() > before,
            "no relist after a 410 (as_http: {as_http})"
        );
        m.kube.set("virtualservices", route("server", "ns", "/two"));
        until(b, "/two", "the route back", |r| app(r) == Some("second")).await;
    }

    // 500s: the last good state serves.
    m.kube.fail(Some(500));
    holds_for(b, Duration::from_secs(2), "second").await;
    wait_log(&wp, "Kubernetes watch failed");
    m.kube.fail(None);
    m.kube
        .set("virtualservices", route("server", "ns", "/three"));
    until(b, "/two", "a change after the 500s", |r| {
        app(r) == Some("server")
    })
    .await;

    // Down: the same.
    m.kube.set_down(true);
    m.kube.set("virtualservices", route("server", "ns", "/two"));
    holds_for(b, Duration::from_secs(2), "server").await;
    m.kube.set_down(false);
    until(b, "/two", "the change made while down", |r| {
        app(r) == Some("second")
    })
    .await;
}

/// A bad object is rejected by kind, namespace, name and field, and counted; the others
/// apply; a bad version of a good object leaves the good version serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_object_is_rejected_by_name_and_the_others_apply() {
    let m = seeded_mesh(Block(20)).await;
    let b = m.b;
    let wp = m.waypoint(&[]);
    first_state(b).await;
    // Istio's VirtualService has no `timeoutt` (HTTPRoute's field is `timeout`): an unknown
    // field is an error naming it, never ignored.
    let mut bad = route("bad", "ns", "/bad");
    bad["spec"]["http"][0]["timeoutt"] = serde_json::json!("1s");
    m.kube.set("virtualservices", bad);
    m.kube
        .set("virtualservices", route("server", "ns", "/three"));
    until(b, "/three", "the good object beside the bad one", |r| {
        app(r) == Some("second")
    })
    .await;
    let logs = wait_log(&wp, "VirtualService ns/bad");
    assert!(logs.contains("timeoutt"), "{logs}");
    // A bad version of the deny policy: the good one stays (a DENY never vanishes because its
    // update was invalid). Istio's `action` is ALLOW, DENY, AUDIT or CUSTOM.
    let mut policy = deny_admin();
    policy["spec"]["action"] = serde_json::json!("MAYBE");
    m.kube.set("authorizationpolicies", policy);
    wait_log(&wp, "AuthorizationPolicy ns/no-admin");
    holds_for(b, Duration::from_millis(500), "server").await;
    let metrics =
        mesh_tests::http_get(std::net::SocketAddr::new(b.waypoint(), 15020), "/metrics").await;
    let rejected: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mesh_config_rejected_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(rejected >= 2.0, "{metrics}");
}

/// Attack: objects of a namespace that does not concern the waypoint never apply: it never
/// watches that namespace, and an object of it slipped into a watched namespace's list (a
/// misbehaving API server or a proxy in front of it) is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_other_namespaces_never_apply() {
    let m = seeded_mesh(Block(30)).await;
    let b = m.b;
    let wp = m.waypoint(&[]);
    first_state(b).await;
    // Istio's waypoints take producer routes from the service's namespace (Gateway API
    // GAMMA, GEP-1426); a route of namespace `other` for `server` would hijack it.
    m.kube.set("virtualservices", route("evil", "other", "/"));
    let mut slipped = route("evil2", "other", "/");
    slipped["metadata"]["name"] = serde_json::json!("evil2");
    m.kube.inject("virtualservices", "ns", slipped);
    let logs = wait_log(&wp, "VirtualService ns/evil2");
    assert!(logs.contains("metadata.namespace"), "{logs}");
    holds_for(b, Duration::from_secs(1), "second").await;
    assert_eq!(app(&get(b, "/").await), Some("server"));
    let reqs = m.kube.requests();
    assert!(
        reqs.iter().all(|r| !r.uri.contains("/namespaces/other/")),
        "{reqs:?}"
    );
}

/// Attack: an endless watch stream and a huge list cost at most the caps: objects over
/// `--kube-max-objects` are rejected, a response over `--kube-max-response-bytes` fails (the
/// watch resumes, the list retries), the waypoint's memory stays small and the last good
/// state serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_watch_and_a_huge_list_are_bounded() {
    let m = seeded_mesh(Block(40)).await;
    let b = m.b;
    let wp = m.waypoint(&[
        "--kube-max-objects",
        "100",
        "--kube-max-response-bytes",
        "1048576",
    ]);
    first_state(b).await;
    let rss_before = wp.rss();
    m.kube.endless_watch("virtualservices", "ns");
    wait_log(&wp, "more than 100 objects");
    wait_log(&wp, "larger than 1048576 bytes");
    holds_for(b, Duration::from_secs(2), "second").await;
    // A list of 20 000 objects of 300 bytes (6 MB): refused at 1 MiB, retried with backoff.
    m.kube
        .huge_list("virtualservices", "istio-system", 20_000, 300);
    m.kube.expire(false);
    holds_for(b, Duration::from_secs(2), "second").await;
    let rss = wp.rss();
    assert!(
        rss < rss_before + 64 * 1024 * 1024,
        "RSS grew from {rss_before} to {rss}"
    );
}

/// `--kube` is exclusive with `--config`, needs istiod (`--xds-address`), exists on the
/// waypoint and the sidecar only, and a kubeconfig that cannot be read stops the start with
/// its path named.
#[test]
fn kube_flags() {
    let run = |bin: &str, args: &[&str]| {
        let out = std::process::Command::new(mesh_tests::bin(bin))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let xds = ["--xds-address", "http://127.226.90.1:1"];
    let ca = ["--ca-address", "http://127.226.90.1:2"];
    for bin in ["waypoint", "sidecar"] {
        let who = if bin == "waypoint" {
            "--gateway"
        } else {
            "--workload"
        };
        let (code, err) = run(
            bin,
            &[who, "ns/x", "--kube", "--config", "l7.yaml", xds[0], xds[1]],
        );
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("cannot be used with"), "{err}");
        let (code, err) = run(bin, &[who, "ns/x", "--kube", "--config", "l7.yaml"]);
        assert_eq!(code, Some(2), "{err}");
        let (code, err) = run(
            bin,
            &[
                who,
                "ns/x",
                "--address",
                "127.226.90.2",
                "--kube",
                "--kubeconfig",
                "/nonexistent/kubeconfig",
                xds[0],
                xds[1],
                ca[0],
                ca[1],
            ],
        );
        assert_ne!(code, Some(0), "{err}");
        assert!(
            err.contains("--kubeconfig /nonexistent/kubeconfig"),
            "{err}"
        );
    }
    let (code, err) = run("ztunnel", &["--node", "a", "--kube"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--kube"), "{err}");
}
