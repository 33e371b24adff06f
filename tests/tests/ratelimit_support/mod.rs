//! What the rate limit tests share: the mesh (a waypoint mesh on third octets of its own,
//! so tests run side by side), header and metric lookups. Loopback block 127.214.x.x.

#![allow(dead_code)]

/// The loopback block of the rate limit tests.
pub(crate) const B: u8 = 214;

/// A waypoint mesh (as `waypoint_mesh`) on third octets `o` (nodes, waypoint), `o+1`
/// (workloads), `o+2` (service VIP), so tests can run side by side.
pub(crate) fn mesh_yaml(o: u8, waypoint: bool, extra: &str) -> String {
    let (w, v) = (o + 1, o + 2);
    let use_wp = if waypoint {
        ", labels: {istio.io/use-waypoint: wp}"
    } else {
        ""
    };
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: 127.{B}.{o}.1, serviceListeners: true, workloads: [ns/client, ns/intruder]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: 127.{B}.{o}.2, workloads: [ns/web]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: 127.{B}.{w}.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: intruder, namespace: ns}}
spec: {{address: 127.{B}.{w}.11, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web, namespace: ns}}
spec: {{address: 127.{B}.{w}.21, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns{use_wp}}}
spec:
  hosts: [web.ns.svc]
  addresses: [127.{B}.{v}.1]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: 127.{B}.{o}.3}}]
{extra}"#
    )
}

/// A response header's value.
pub(crate) fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The sum of `metric` samples whose labels contain every one of `labels`.
pub(crate) fn metric(text: &str, metric: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
