//! Sidecar mode with transparent capture (real binaries, root): two "pods" (network
//! namespaces joined by a veth pair), each with its sidecar and `meshctl capture` rules.
//! Unmodified clients connect to a service VIP or a pod IP; the sidecars carry the traffic
//! over HBONE with the pods' identities. Skipped (with a printed reason) without root; runs
//! in the `netns` nextest group.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_IP: &str = "10.73.0.2";
const SERVER_IP: &str = "10.73.0.3";
const VIP: &str = "10.73.0.100";

const SECRET: &[u8] = b"sidecar-test-hmac-key-32-bytes!!";

fn jwks() -> String {
    use base64::Engine;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    format!(r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{k}"}}]}}"#)
}

fn token(sub: &str) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    jsonwebtoken::encode(
        &h,
        &serde_json::json!({"iss": "test-issuer", "sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn config() -> String {
    let jwks = jwks();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec:
  address: {CLIENT_IP}
  serviceAccount: client
  labels: {{app: client, sidecar.istio.io/inject: "true"}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: ns}}
spec:
  address: {SERVER_IP}
  serviceAccount: server
  labels: {{app: server, sidecar.istio.io/inject: "true"}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: ns}}
spec:
  hosts: [server.ns.svc]
  addresses: [{VIP}]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}
  - {{number: 81, name: http-admin, protocol: HTTP, targetPort: 8081}}
  workloadSelector: {{labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: server, namespace: ns}}
spec:
  hosts: [server.ns.svc]
  http:
  - match: [{{uri: {{prefix: /maintenance}}}}]
    directResponse: {{status: 503, body: {{string: answered by the client sidecar}}}}
  - match: [{{uri: {{prefix: /old/}}}}]
    rewrite: {{uri: /new/}}
    route: [{{destination: {{host: server.ns.svc}}}}]
  - route: [{{destination: {{host: server.ns.svc}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admin-paths, namespace: ns}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: DENY
  rules: [{{to: [{{operation: {{ports: ["8081"], paths: ["/admin*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: ns}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  jwtRules:
  - issuer: test-issuer
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-9001, namespace: ns}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: DENY
  rules: [{{to: [{{operation: {{ports: ["9001"]}}}}]}}]
"#
    )
}

/// A server-first protocol: greets on accept, then echoes one line.
async fn greeter(addr: SocketAddr) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 greeter ready\r\n").await;
                let mut buf = [0u8; 256];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
}

/// Records TCP on `dev` in `ns` to `file` until stopped; `None` (with the reason printed)
/// without tcpdump.
fn tcpdump(ns: &NetNs, dev: &str, file: &std::path::Path) -> Option<Proc> {
    if std::process::Command::new("tcpdump")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("tcpdump not installed: the wire check is skipped");
        return None;
    }
    let mut cmd = std::process::Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.name,
        "tcpdump",
        "--immediate-mode",
        "-i",
        dev,
        "-U",
        "-s",
        "0",
        "-w",
    ])
    .arg(file)
    .arg("tcp");
    Some(Proc::start("tcpdump", cmd, Some("listening on")))
}

fn ns_ok(ns: &NetNs, cmd: &[&str]) -> bool {
    ns.pod().exec(cmd).is_ok()
}

#[test]
fn sidecars_carry_captured_traffic_over_hbone() {
    let Some(pa) = NetNs::create("mesh-t73a") else {
        return;
    };
    let Some(pb) = NetNs::create("mesh-t73b") else {
        return;
    };
    // One veth pair: va in pod a, vb in pod b.
    link_pods(
        &pa,
        &format!("{CLIENT_IP}/24"),
        &pb,
        &format!("{SERVER_IP}/24"),
    );

    let mut mesh = TestMesh::new(&config());
    let (ra, rb) = (pa.runtime(), pb.runtime());
    rb.block_on(rb.spawn(async {
        http_app("0.0.0.0:8080".parse().unwrap(), "server").await;
        http_app("0.0.0.0:9001".parse().unwrap(), "secret").await;
        http_app("0.0.0.0:8081".parse().unwrap(), "admin").await;
        greeter("0.0.0.0:9002".parse().unwrap()).await;
    }))
    .unwrap();
    mesh.sidecar("a", "ns/client", Some(&pa.name), &[]);
    mesh.sidecar("b", "ns/server", Some(&pb.name), &[]);
    for ns in [&pa, &pb] {
        let (ok, out, err) = meshctl(
            &["capture", "install", "--netns", &ns.name],
            mesh.dir.path(),
        );
        assert!(ok, "capture install: {out}{err}");
    }

    // The wire between the pods, recorded (when tcpdump is installed; CI installs it).
    let pcap = mesh.dir.path().join("wire.pcap");
    let mut dump = tcpdump(&pb, "vb", &pcap);
    // Unmodified clients: the service VIP and the pod IP, as if the mesh were not there.
    let get_path = |dst: &'static str, path: &'static str| {
        ra.block_on(ra.spawn(async move {
            let dst: SocketAddr = dst.parse().unwrap();
            let tcp = tokio::net::TcpStream::connect(dst).await.unwrap();
            let mut s = tokio::io::BufReader::new(tcp);
            http_request(&mut s, "GET", path, "server.ns.svc", &[]).await
        }))
        .unwrap()
    };
    let get = |dst: &'static str| get_path(dst, "/hello");
    let (status, _, body) = get_path("10.73.0.100:80", "/secret-in-mtls");
    assert_eq!(
        (status, body.as_str()),
        (200, "server GET /secret-in-mtls host=server.ns.svc")
    );
    let (status, _, _) = get("10.73.0.3:8080");
    assert_eq!(status, 200);
    // The client's sidecar routes HTTP to the service itself (no waypoint): a rewrite, and a
    // direct response that never leaves the pod.
    let (status, _, body) = get_path("10.73.0.100:80", "/old/page");
    assert_eq!(
        (status, body.as_str()),
        (200, "server GET /new/page host=server.ns.svc")
    );
    let (status, h, body) = get_path("10.73.0.100:80", "/maintenance");
    assert_eq!(
        (status, body.as_str()),
        (503, "answered by the client sidecar")
    );
    assert!(!h.iter().any(|(k, _)| k == "x-app"));
    // Server-side L7 at the destination sidecar: path policy (normalized) and JWT.
    let req_with = |dst: &'static str, path: &'static str, headers: Vec<(String, String)>| {
        ra.block_on(ra.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(dst.parse::<SocketAddr>().unwrap())
                .await
                .unwrap();
            let mut s = tokio::io::BufReader::new(tcp);
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            http_request(&mut s, "GET", path, "server.ns.svc", &h).await
        }))
        .unwrap()
    };
    for p in ["/admin", "/%2Fadmin", "/x/../admin/users"] {
        let (status, h, body) = req_with("10.73.0.100:81", p, vec![]);
        assert_eq!((status, body.as_str()), (403, "RBAC: access denied"), "{p}");
        assert!(!h.iter().any(|(k, _)| k == "x-app"), "{p} reached the app");
    }
    assert_eq!(req_with("10.73.0.100:81", "/status", vec![]).0, 200);
    let auth = |t: &str| vec![("authorization".to_owned(), format!("Bearer {t}"))];
    let (status, _, body) = req_with("10.73.0.100:80", "/me", auth("not-a-jwt"));
    assert_eq!(
        (status, body.as_str()),
        (401, "Jwt is not in the form of Header.Payload.Signature")
    );
    let (status, h, _) = req_with("10.73.0.100:80", "/me", auth(&token("alice")));
    assert_eq!(status, 200);
    let got = h.iter().find(|(k, _)| k == "x-got").map(|(_, v)| v.clone());
    assert!(
        got.as_deref()
            .is_some_and(|g| g.contains("x-jwt-sub=alice") && !g.contains("authorization")),
        "{got:?}"
    );
    let server_metrics: SocketAddr = format!("{SERVER_IP}:15020").parse().unwrap();
    rb.block_on(rb.spawn(async move {
        scrape_until(server_metrics, "destination-reported requests", |t| {
            let m = |code| {
                metric(
                    t,
                    "istio_requests_total",
                    &[
                        ("reporter", "destination"),
                        ("response_code", code),
                        ("connection_security_policy", "mutual_tls"),
                        ("source_principal", "spiffe://cluster.local/ns/ns/sa/client"),
                    ],
                )
            };
            m("403") == 3.0 && m("401") == 1.0
        })
        .await;
    }))
    .unwrap();
    let client_metrics: SocketAddr = format!("{CLIENT_IP}:15020").parse().unwrap();
    ra.block_on(ra.spawn(async move {
        scrape_until(client_metrics, "source-reported requests", |t| {
            let m = |code| {
                metric(
                    t,
                    "istio_requests_total",
                    &[
                        ("reporter", "source"),
                        ("response_code", code),
                        ("destination_service", "server.ns.svc"),
                    ],
                )
            };
            m("200") == 4.0 && m("503") == 1.0 && m("403") == 3.0
        })
        .await;
    }))
    .unwrap();
    // All went through HBONE: the destination sidecar (serving HTTP here, as the workload
    // has a RequestAuthentication) saw mTLS requests from the client's identity: the VIP and
    // pod-IP requests, the rewrite, /status and the valid token.
    let metrics: SocketAddr = format!("{SERVER_IP}:15020").parse().unwrap();
    rb.block_on(rb.spawn(async move {
        let want = [
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", "spiffe://cluster.local/ns/ns/sa/client"),
            ("destination_workload", "server"),
            ("response_code", "200"),
        ];
        scrape_until(metrics, "5 mTLS requests", |t| {
            metric(t, "istio_requests_total", &want) == 5.0
        })
        .await;
    }))
    .unwrap();
    mesh.expect_log("a", r#""direction":"outbound""#);

    // L4 policy at the destination sidecar: port 9001 is denied, the app never answers.
    let denied = ra
        .block_on(ra.spawn(async {
            let mut s = tokio::net::TcpStream::connect("10.73.0.3:9001")
                .await
                .unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
            buf
        }))
        .unwrap();
    assert!(denied.is_empty(), "denied port answered: {denied:?}");
    mesh.expect_log("b", "no-9001");

    // A server-first protocol works with no configuration.
    let greeting = ra
        .block_on(ra.spawn(async {
            let mut s = tokio::net::TcpStream::connect("10.73.0.3:9002")
                .await
                .unwrap();
            let mut buf = vec![0u8; 19];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
                .await
                .expect("greeting in time")
                .unwrap();
            s.write_all(b"EHLO\r\n").await.unwrap();
            let mut echo = [0u8; 6];
            s.read_exact(&mut echo).await.unwrap();
            (buf, echo)
        }))
        .unwrap();
    assert_eq!(&greeting.0, b"220 greeter ready\r\n");
    assert_eq!(&greeting.1, b"EHLO\r\n");

    // Removing capture leaves no rules behind; the client then goes out in plaintext, and
    // the server pod's inbound capture still hands it to its sidecar (PERMISSIVE).
    let (ok, _, err) = meshctl(&["capture", "remove", "--netns", &pa.name], mesh.dir.path());
    assert!(ok, "{err}");
    assert!(!ns_ok(
        &pa,
        &["iptables", "-t", "nat", "-L", "MESH_OUTPUT", "-n"]
    ));
    let (status, _, _) = get_path("10.73.0.3:8080", "/plain-on-the-wire");
    assert_eq!(status, 200);
    // Captured plaintext gets the same per-request policy at the server's sidecar.
    let (status, _, body) = req_with("10.73.0.3:8081", "/%2Fadmin", vec![]);
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(req_with("10.73.0.3:8081", "/fine", vec![]).0, 200);
    rb.block_on(rb.spawn(async move {
        scrape_until(metrics, "plaintext requests", |t| {
            let m = |code| {
                metric(
                    t,
                    "istio_requests_total",
                    &[
                        ("reporter", "destination"),
                        ("connection_security_policy", "unknown"),
                        ("response_code", code),
                    ],
                )
            };
            m("200") == 2.0 && m("403") == 1.0
        })
        .await;
    }))
    .unwrap();
    // On the wire: the mTLS request's path never appears in clear; the plaintext one does
    // (so the recording itself works).
    if let Some(d) = dump.as_mut() {
        d.stop();
        let wire = std::fs::read(&pcap).unwrap();
        let has = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
        assert!(
            has(b"/plain-on-the-wire"),
            "tcpdump recorded nothing useful ({} bytes): {}",
            wire.len(),
            d.logs()
        );
        assert!(!has(b"/secret-in-mtls"), "plaintext payload on the wire");
        assert!(!has(b"server GET /hello"), "plaintext response on the wire");
    }

    // The workload finished: POST /quitquitquit stops its sidecar cleanly.
    let quit = ra
        .block_on(ra.spawn(async {
            let mut s = tokio::net::TcpStream::connect("127.0.0.1:15000").await.unwrap();
            s.write_all(b"POST /quitquitquit HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            out
        }))
        .unwrap();
    assert!(quit.starts_with("HTTP/1.1 200"), "{quit}");
    let a = mesh
        .procs
        .iter_mut()
        .find(|p| p.name == "ztunnel a")
        .unwrap();
    let exited = a.wait_exit(Duration::from_secs(5));
    assert!(exited.expect("sidecar exited").success());
}

fn mixed_config() -> String {
    r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {name: c}
spec: {address: 10.74.0.10, workloads: [ns/amb]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: ns}
spec: {address: 10.74.0.2, serviceAccount: client, labels: {app: client, sidecar.istio.io/inject: "true"}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: ns}
spec: {address: 10.74.0.3, serviceAccount: web, labels: {app: web, sidecar.istio.io/inject: "true"}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: amb, namespace: ns}
spec: {address: 10.74.0.4, serviceAccount: amb, labels: {app: amb}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: ns, labels: {istio.io/use-waypoint: wp}}
spec:
  hosts: [web.ns.svc]
  addresses: [10.74.0.100]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: web}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: ns}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{value: 10.74.0.5}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: ns}
spec:
  targetRefs: [{kind: Service, name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#
    .to_owned()
}

/// Sidecar ↔ ztunnel ↔ waypoint: three "hosts" on one bridge (a namespace of its own): pod a
/// (sidecar client), pod b (sidecar server behind a waypoint service), host c (a ztunnel node
/// with an ambient workload, and the waypoint).
#[test]
fn sidecars_ztunnels_and_waypoints_mix() {
    let Some(mut sw) = switch("mesh-t74s") else {
        return;
    };
    let pods: Vec<NetNs> = ["mesh-t74a", "mesh-t74b", "mesh-t74c"]
        .iter()
        .map(|n| NetNs::create(n).unwrap())
        .collect();
    let (pa, pb, pc) = (&pods[0], &pods[1], &pods[2]);
    for (ns, addrs) in [
        (pa, &["10.74.0.2/24"][..]),
        (pb, &["10.74.0.3/24"][..]),
        (pc, &["10.74.0.10/24", "10.74.0.4/24", "10.74.0.5/24"][..]),
    ] {
        sw.attach(ns.pod(), addrs).unwrap();
    }

    let mut mesh = TestMesh::new(&mixed_config());
    let (ra, rb, rc) = (pa.runtime(), pb.runtime(), pc.runtime());
    rb.block_on(rb.spawn(http_app("0.0.0.0:8080".parse().unwrap(), "web")))
        .unwrap();
    rc.block_on(rc.spawn(http_app("10.74.0.4:8080".parse().unwrap(), "amb")))
        .unwrap();
    mesh.netns = Some(pc.name.clone());
    mesh.ztunnel("c", &[]);
    mesh.waypoint("wp", "ns/wp", &["--admin-addr", "127.0.0.1:15099"]);
    mesh.netns = None;
    mesh.sidecar("a", "ns/client", Some(&pa.name), &[]);
    mesh.sidecar("b", "ns/web", Some(&pb.name), &[]);
    for ns in [pa, pb] {
        let (ok, _, err) = meshctl(
            &["capture", "install", "--netns", &ns.name],
            mesh.dir.path(),
        );
        assert!(ok, "{err}");
    }
    let get_from_a = |dst: &'static str, path: &'static str| {
        ra.block_on(ra.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(dst.parse::<SocketAddr>().unwrap())
                .await
                .unwrap();
            let mut s = tokio::io::BufReader::new(tcp);
            http_request(&mut s, "GET", path, "web.ns.svc", &[]).await
        }))
        .unwrap()
    };

    // Sidecar → ambient: HBONE from the client's sidecar to ztunnel c, the client's identity.
    let (status, _, body) = get_from_a("10.74.0.4:8080", "/x");
    assert_eq!((status, body.as_str()), (200, "amb GET /x host=web.ns.svc"));
    mesh.expect_log(
        "c",
        r#""src.identity":"spiffe://cluster.local/ns/ns/sa/client""#,
    );

    // Sidecar → waypoint → sidecar: the service's waypoint routes and applies L7 policy
    // (once, there), whatever the client's mode.
    let (status, _, body) = get_from_a("10.74.0.100:80", "/hello");
    assert_eq!(
        (status, body.as_str()),
        (200, "web GET /hello host=web.ns.svc")
    );
    let (status, h, body) = get_from_a("10.74.0.100:80", "//admin");
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert!(!h.iter().any(|(k, _)| k == "x-app"));
    // Skipping the waypoint (the pod IP directly) is refused by the server's sidecar.
    let direct = ra
        .block_on(ra.spawn(async {
            let mut s = tokio::net::TcpStream::connect("10.74.0.3:8080")
                .await
                .unwrap();
            let _ = s
                .write_all(b"GET /direct HTTP/1.1\r\nhost: x\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
            buf
        }))
        .unwrap();
    assert!(direct.is_empty(), "the waypoint was skipped: {direct:?}");
    mesh.expect_log("b", "must come through the workload's waypoint: 401");

    // Ambient → waypoint → sidecar: the ambient workload through ztunnel c's SOCKS5.
    let (status, _, body) = rc
        .block_on(rc.spawn(async {
            let s = socks5_connect(
                "10.74.0.4".parse().unwrap(),
                // SOCKS5 listens on loopback (the node address is not loopback).
                "127.0.0.1:15080".parse().unwrap(),
                "web.ns.svc",
                80,
            )
            .await
            .unwrap();
            let mut s = tokio::io::BufReader::new(s);
            http_request(&mut s, "GET", "/from-ambient", "web.ns.svc", &[]).await
        }))
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "web GET /from-ambient host=web.ns.svc")
    );
    // The waypoint saw both clients' requests, with their identities.
    rc.block_on(rc.spawn(async {
        let metrics: SocketAddr = "10.74.0.5:15020".parse().unwrap();
        scrape_until(metrics, "waypoint requests", |t| {
            let by = |p: &str| {
                metric(
                    t,
                    "istio_requests_total",
                    &[("reporter", "waypoint"), ("source_principal", p)],
                )
            };
            by("spiffe://cluster.local/ns/ns/sa/client") == 2.0
                && by("spiffe://cluster.local/ns/ns/sa/amb") == 1.0
        })
        .await;
    }))
    .unwrap();
}

fn in_pod_config(ns: &[&NetNs], with_d: bool) -> String {
    let path = |i: usize| format!("/var/run/netns/{}", ns[i].name);
    let (d_wl, d_ns) = if with_d {
        (", ns/d", format!(", ns/d: {}", path(3)))
    } else {
        ("", String::new())
    };
    let mut c = format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: n1}}
spec:
  address: 127.75.0.1
  workloads: [ns/a, ns/b{d_wl}]
  netns: {{ns/a: {}, ns/b: {}{d_ns}}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: n2}}
spec:
  address: 127.75.0.2
  workloads: [ns/c]
  netns: {{ns/c: {}}}
"#,
        path(0),
        path(1),
        path(2)
    );
    for (name, ip) in [("a", 2), ("b", 3), ("c", 4), ("d", 5)] {
        c.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{address: 10.75.0.{ip}, serviceAccount: {name}}}\n"
        ));
    }
    c
}

/// ztunnel in-pod mode: two ztunnels (in the test's own namespace) serve pods a, b (node n1)
/// and c (node n2) by opening listeners inside each pod's namespace; pod d joins the mesh at
/// run time and an already-running process of it is captured from then on.
#[test]
fn in_pod_ztunnels_serve_pods_and_onboard_without_restart() {
    let Some(mut sw) = switch("mesh-t75s") else {
        return;
    };
    let pods: Vec<NetNs> = ["mesh-t75a", "mesh-t75b", "mesh-t75c", "mesh-t75d"]
        .iter()
        .map(|n| NetNs::create(n).unwrap())
        .collect();
    for (i, ns) in pods.iter().enumerate() {
        sw.attach(ns.pod(), &[&format!("10.75.0.{}/24", i + 2)])
            .unwrap();
    }
    let refs: Vec<&NetNs> = pods.iter().collect();
    let mut mesh = TestMesh::new(&in_pod_config(&refs, false));
    let rts: Vec<tokio::runtime::Runtime> = pods.iter().map(NetNs::runtime).collect();
    for (i, name) in [(1, "b"), (2, "c")] {
        rts[i]
            .block_on(rts[i].spawn(http_app("0.0.0.0:8080".parse().unwrap(), name)))
            .unwrap();
    }
    let poll = ["--config-poll-interval", "100ms"];
    mesh.ztunnel("n1", &poll);
    mesh.ztunnel("n2", &poll);
    for ns in &pods[..3] {
        let (ok, _, err) = meshctl(
            &["capture", "install", "--netns", &ns.name],
            mesh.dir.path(),
        );
        assert!(ok, "{err}");
    }
    let get = |rt: &tokio::runtime::Runtime, dst: &'static str| {
        rt.block_on(rt.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(dst.parse::<SocketAddr>().unwrap())
                .await
                .unwrap();
            let mut s = tokio::io::BufReader::new(tcp);
            http_request(&mut s, "GET", "/in-pod", "x", &[]).await
        }))
        .unwrap()
    };
    // a → b (same node) and a → c (other node), each over HBONE from a's own namespace.
    assert_eq!(get(&rts[0], "10.75.0.3:8080").2, "b GET /in-pod host=x");
    assert_eq!(get(&rts[0], "10.75.0.4:8080").2, "c GET /in-pod host=x");
    let mtls_from = |metrics: &'static str, src: &'static str| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let principal = format!("spiffe://cluster.local/ns/ns/sa/{src}");
            scrape_until(metrics.parse().unwrap(), "mTLS connection", |t| {
                metric(
                    t,
                    "istio_tcp_connections_opened_total",
                    &[
                        ("reporter", "destination"),
                        ("connection_security_policy", "mutual_tls"),
                        ("source_principal", &principal),
                    ],
                ) >= 1.0
            })
            .await;
        });
    };
    mtls_from("127.75.0.1:15020", "a");
    mtls_from("127.75.0.2:15020", "a");

    // Pod d runs a process before it is in the mesh: its connection arrives in plaintext.
    let d = &rts[3];
    assert_eq!(get(d, "10.75.0.4:8080").2, "c GET /in-pod host=x");
    mesh.expect_log("n2", r#""security":"unknown""#);
    // Onboarding: capture in d's namespace, d on node n1 (a config reload, no restart of d's
    // process or of the ztunnel). The same process's next connection is mTLS as d.
    let (ok, _, err) = meshctl(
        &["capture", "install", "--netns", &pods[3].name],
        mesh.dir.path(),
    );
    assert!(ok, "{err}");
    std::fs::write(&mesh.config, in_pod_config(&refs, true)).unwrap();
    mesh.expect_log("n1", "ns/d captured outbound (in-pod)");
    assert_eq!(get(d, "10.75.0.4:8080").2, "c GET /in-pod host=x");
    mtls_from("127.75.0.2:15020", "d");

    // Offboarding: d leaves the mesh; its listeners inside d's namespace close.
    let (ok, _, err) = meshctl(
        &["capture", "remove", "--netns", &pods[3].name],
        mesh.dir.path(),
    );
    assert!(ok, "{err}");
    std::fs::write(&mesh.config, in_pod_config(&refs, false)).unwrap();
    mesh.expect_log("n1", "listener removed");
    assert_eq!(get(d, "10.75.0.4:8080").2, "c GET /in-pod host=x");
}

/// TPROXY: with `meshctl capture install --tproxy` and `sidecar --tproxy`, the app sees its
/// real peer's address, for mesh (HBONE) and plaintext clients alike.
#[test]
fn tproxy_lets_the_app_see_the_client_address() {
    let Some(pa) = NetNs::create("mesh-t76a") else {
        return;
    };
    let Some(pb) = NetNs::create("mesh-t76b") else {
        return;
    };
    link_pods(&pa, "10.76.0.2/24", &pb, "10.76.0.3/24");
    let cfg = config()
        .replace(CLIENT_IP, "10.76.0.2")
        .replace(SERVER_IP, "10.76.0.3")
        .replace(VIP, "10.76.0.100");
    let mut mesh = TestMesh::new(&cfg);
    let (ra, rb) = (pa.runtime(), pb.runtime());
    rb.block_on(rb.spawn(http_app("0.0.0.0:9080".parse().unwrap(), "plain-port")))
        .unwrap();
    mesh.sidecar("a", "ns/client", Some(&pa.name), &[]);
    mesh.sidecar("b", "ns/server", Some(&pb.name), &["--tproxy"]);
    let (ok, _, err) = meshctl(
        &["capture", "install", "--netns", &pa.name],
        mesh.dir.path(),
    );
    assert!(ok, "{err}");
    let (ok, _, err) = meshctl(
        &["capture", "install", "--tproxy", "--netns", &pb.name],
        mesh.dir.path(),
    );
    assert!(ok, "{err}");
    let peer_seen = |ra: &tokio::runtime::Runtime| {
        let (status, h, body) = ra
            .block_on(ra.spawn(async {
                let tcp = tokio::net::TcpStream::connect("10.76.0.3:9080")
                    .await
                    .unwrap();
                let mut s = tokio::io::BufReader::new(tcp);
                http_request(&mut s, "GET", "/who", "x", &[]).await
            }))
            .unwrap();
        assert_eq!(status, 200, "{body}");
        h.iter()
            .find(|(k, _)| k == "x-peer")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    // Over HBONE: the client's address from the tunnel's Forwarded header.
    assert_eq!(peer_seen(&ra), "10.76.0.2");
    mesh.expect_log("b", r#""security":"mutual_tls""#);
    // Plaintext (the client's capture removed): TPROXY'd to the sidecar, handed on from the
    // client's address.
    let (ok, _, err) = meshctl(&["capture", "remove", "--netns", &pa.name], mesh.dir.path());
    assert!(ok, "{err}");
    assert_eq!(peer_seen(&ra), "10.76.0.2");
    mesh.expect_log("b", r#""security":"unknown""#);
    // Removal leaves neither rules nor policy routing behind.
    let (ok, _, err) = meshctl(&["capture", "remove", "--netns", &pb.name], mesh.dir.path());
    assert!(ok, "{err}");
    assert!(!ns_ok(
        &pb,
        &["iptables", "-t", "mangle", "-L", "MESH_INBOUND", "-n"]
    ));
    let rules = std::process::Command::new("ip")
        .args(["netns", "exec", &pb.name, "ip", "rule", "show"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("lookup 133"));
}

/// `meshctl bench` measures the capture topologies (pods in network namespaces): every
/// request answered, figures present, namespaces gone afterwards.
#[test]
fn bench_measures_sidecar_pair_and_captured_ztunnels() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root for network namespaces and iptables");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let (ok, out, err) = meshctl(
        &[
            "bench",
            "--topologies",
            "direct-pods,sidecar-pair,ztunnel-pair-capture,istio-ztunnel-pair",
            "--quick",
            "--rounds",
            "2",
            "--duration",
            "1s",
            "--rate",
            "200",
            "--idle-tunnels",
            "20",
            "--json",
            json.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(ok, "bench failed:\n{out}\n{err}");
    // Without Istio's binary its topology is skipped, saying how to get it, and the rest runs.
    assert!(
        out.contains("istio-ztunnel-pair: skipped") && out.contains("--istio-ztunnel"),
        "{out}"
    );
    assert!(out.contains("(round 2 of 2)"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["rounds"], 2);
    assert_eq!(report["ratios"].as_array().map(Vec::len), Some(0));
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let ours = &results[2];
    assert_eq!(ours["topology"], "ztunnel-pair-capture");
    assert!(ours["cpu_s_per_gb"].as_f64().unwrap() > 0.0, "{ours}");
    assert!(
        ours["rss_after_throughput_mb"].as_f64().unwrap() > 1.0,
        "{ours}"
    );
    assert!(ours["first_byte_cold_ms"].as_f64().unwrap() > 0.0, "{ours}");
    let new_conn = &ours["first_byte_new_conn_ms"];
    assert!(new_conn["p50"].as_f64().unwrap() > 0.0, "{ours}");
    assert!(
        new_conn["p99"].as_f64() >= new_conn["p50"].as_f64(),
        "{ours}"
    );
    for r in results {
        let name = r["topology"].as_str().unwrap();
        assert_eq!(r["requests_failed"], 0, "{name}");
        assert!(r["requests_ok"].as_u64().unwrap() >= 150, "{name}: {r}");
        assert_eq!(r["churn_failed"], 0, "{name}");
        if name != "direct-pods" {
            assert!(r["added_latency_ms"]["p50"].is_f64(), "{name}: {r}");
            assert!(
                r["cpu_s_per_1000_requests"].as_f64().unwrap() > 0.0,
                "{name}"
            );
        }
    }
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("mbench-a-"),
        "bench namespaces left behind"
    );
}

/// IPv6: capture with `--ipv6`, the original destination from `IP6T_SO_ORIGINAL_DST`, HBONE
/// between IPv6 pods.
#[test]
fn ipv6_pods_through_sidecars() {
    let Some(pa) = NetNs::create("mesh-t77a") else {
        return;
    };
    let Some(pb) = NetNs::create("mesh-t77b") else {
        return;
    };
    link_pods(&pa, "fd00:77::2/64", &pb, "fd00:77::3/64");
    let cfg = config()
        .replace(CLIENT_IP, "fd00:77::2")
        .replace(VIP, "fd00:77::100")
        .replace(SERVER_IP, "fd00:77::3");
    let mut mesh = TestMesh::new(&cfg);
    let (ra, rb) = (pa.runtime(), pb.runtime());
    rb.block_on(rb.spawn(http_app("[::]:8080".parse().unwrap(), "server6")))
        .unwrap();
    mesh.sidecar("a", "ns/client", Some(&pa.name), &[]);
    mesh.sidecar("b", "ns/server", Some(&pb.name), &[]);
    for ns in [&pa, &pb] {
        let (ok, _, err) = meshctl(
            &["capture", "install", "--ipv6", "--netns", &ns.name],
            mesh.dir.path(),
        );
        assert!(ok, "{err}");
    }
    for dst in ["[fd00:77::100]:80", "[fd00:77::3]:8080"] {
        let (status, _, body) = ra
            .block_on(ra.spawn(async move {
                let tcp = tokio::net::TcpStream::connect(dst.parse::<SocketAddr>().unwrap())
                    .await
                    .unwrap();
                let mut s = tokio::io::BufReader::new(tcp);
                http_request(&mut s, "GET", "/v6", "server.ns.svc", &[]).await
            }))
            .unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "server6 GET /v6 host=server.ns.svc"),
            "{dst}"
        );
    }
    let metrics: SocketAddr = "[fd00:77::3]:15020".parse().unwrap();
    rb.block_on(rb.spawn(async move {
        scrape_until(metrics, "two mTLS requests over IPv6", |t| {
            metric(
                t,
                "istio_requests_total",
                &[
                    ("reporter", "destination"),
                    ("connection_security_policy", "mutual_tls"),
                    ("source_principal", "spiffe://cluster.local/ns/ns/sa/client"),
                    ("response_code", "200"),
                ],
            ) == 2.0
        })
        .await;
    }))
    .unwrap();
    for ns in [&pa, &pb] {
        let (ok, _, err) = meshctl(
            &["capture", "remove", "--ipv6", "--netns", &ns.name],
            mesh.dir.path(),
        );
        assert!(ok, "{err}");
    }
    assert!(!ns_ok(
        &pa,
        &["ip6tables", "-t", "nat", "-L", "MESH_OUTPUT", "-n"]
    ));
}
