//! The names a query may mean, relative to the asking pod's namespace (Istio ztunnel
//! `src/dns/server.rs`, `get_aliases` / `to_kube_fqdns`): the name itself; its Kubernetes
//! forms (`name` → `name.<ns>.svc.<domain>`, `name.ns` → `name.ns.svc.<domain>`,
//! `name.ns.svc` → `name.ns.svc.<domain>`, and the endpoint forms `pod.svc[.ns[.svc]]`); and
//! the same for the name with one of the pod's search domains (`<ns>.svc.<domain>`,
//! `svc.<domain>`, `<domain>`) stripped, which a stub resolver appended.
//!
//! Names here are lower case, without the trailing dot.

/// One name to look up, and whether it may be an endpoint host of a headless service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) name: String,
    pub(crate) pod_host: bool,
}

/// The candidates for `name` asked from namespace `ns` under cluster `domain`, in the order
/// they are tried, without duplicates.
pub(crate) fn candidates(name: &str, ns: &str, domain: &str) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::with_capacity(8);
    let mut push = |c: Candidate| {
        if !out.iter().any(|o| o.name == c.name) {
            out.push(c);
        }
    };
    let labels = name.split('.').count();
    // Istio: a name of six labels may be `pod.svc.ns.svc.cluster.local`.
    let pod_host = labels == 6;
    push(Candidate {
        name: name.to_owned(),
        pod_host,
    });
    for c in kube_forms(name, ns, domain) {
        push(c);
    }
    let searches = [
        format!("{ns}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_owned(),
    ];
    for search in &searches {
        let Some(stripped) = name
            .strip_suffix(search.as_str())
            .and_then(|s| s.strip_suffix('.'))
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        push(Candidate {
            name: stripped.to_owned(),
            pod_host,
        });
        for c in kube_forms(stripped, ns, domain) {
            push(c);
        }
    }
    out
}

/// The Kubernetes FQDNs a partially qualified `name` expands to (Istio `to_kube_fqdns`).
fn kube_forms(name: &str, ns: &str, domain: &str) -> Vec<Candidate> {
    let labels: Vec<&str> = name.split('.').collect();
    let svc = |pod_host, name: String| Candidate { name, pod_host };
    match labels.as_slice() {
        [_] => vec![svc(false, format!("{name}.{ns}.svc.{domain}"))],
        [_, _] => vec![
            svc(false, format!("{name}.svc.{domain}")),
            svc(true, format!("{name}.{ns}.svc.{domain}")),
        ],
        [_, _, last] => {
            let mut v = Vec::with_capacity(2);
            if *last == "svc" {
                v.push(svc(false, format!("{name}.{domain}")));
            }
            v.push(svc(true, format!("{name}.svc.{domain}")));
            v
        }
        [_, _, _, "svc"] => vec![svc(true, format!("{name}.{domain}"))],
        _ => Vec::new(),
    }
}

/// `name` and its wildcard forms, most specific first (`a.b.c`, `*.b.c`, `*.c`), as Istio
/// matches `ServiceEntry` wildcard hosts.
pub(crate) fn wildcards(name: &str) -> impl Iterator<Item = String> + '_ {
    let full = std::iter::once(name.to_owned());
    let suffixes = name
        .match_indices('.')
        .map(move |(i, _)| format!("*{}", &name[i..]));
    full.chain(suffixes)
}

/// Splits an SRV name `_port._proto.rest` into (`port`, `proto`, `rest`).
pub(crate) fn srv_parts(name: &str) -> Option<(&str, &str, &str)> {
    let (port, rest) = name.split_once('.')?;
    let (proto, rest) = rest.split_once('.')?;
    let port = port.strip_prefix('_')?;
    let proto = proto.strip_prefix('_')?;
    (!port.is_empty() && !proto.is_empty() && !rest.is_empty()).then_some((port, proto, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(name: &str) -> Vec<(String, bool)> {
        candidates(name, "ns1", "cluster.local")
            .into_iter()
            .map(|c| (c.name, c.pod_host))
            .collect()
    }

    // Istio ztunnel src/dns/server.rs `test_to_kube_fqdns`: the expansions per label count.
    #[test]
    fn kube_forms_as_istio() {
        let c = |n: &str, p| (n.to_owned(), p);
        assert_eq!(
            names("name"),
            vec![c("name", false), c("name.ns1.svc.cluster.local", false)]
        );
        assert_eq!(
            names("name.ns2"),
            vec![
                c("name.ns2", false),
                c("name.ns2.svc.cluster.local", false),
                c("name.ns2.ns1.svc.cluster.local", true)
            ]
        );
        assert_eq!(
            names("name.ns2.svc"),
            vec![
                c("name.ns2.svc", false),
                c("name.ns2.svc.cluster.local", false),
                c("name.ns2.svc.svc.cluster.local", true)
            ]
        );
        assert_eq!(
            names("pod.sub.ns.svc"),
            vec![
                c("pod.sub.ns.svc", false),
                c("pod.sub.ns.svc.cluster.local", true)
            ]
        );
        assert_eq!(names("pod.sub.ns.not-svc").len(), 1);
        assert_eq!(
            names("name.ns2.svc.cluster.local")[0],
            c("name.ns2.svc.cluster.local", false)
        );
    }

    #[test]
    fn search_domains_are_stripped() {
        // A stub resolver with `search ns1.svc.cluster.local …` asked `web.ns1` as
        // `web.ns1.ns1.svc.cluster.local`: stripping the first search domain finds `web.ns1`.
        let n = names("web.ns1.ns1.svc.cluster.local");
        assert!(n.contains(&("web.ns1".to_owned(), true)));
        assert!(n.contains(&("web.ns1.svc.cluster.local".to_owned(), false)));
    }

    #[test]
    fn wildcard_forms() {
        let w: Vec<String> = wildcards("a.b.c").collect();
        assert_eq!(w, ["a.b.c", "*.b.c", "*.c"]);
    }

    #[test]
    fn srv_names() {
        assert_eq!(
            srv_parts("_http._tcp.web.ns.svc"),
            Some(("http", "tcp", "web.ns.svc"))
        );
        assert_eq!(srv_parts("http._tcp.web"), None);
        assert_eq!(srv_parts("_http._tcp"), None);
    }
}
