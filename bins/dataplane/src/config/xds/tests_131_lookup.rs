//! Unit tests of the client-dependent lookups of Istio 1.31's workload API: `canonical`,
//! `visibility`, CIDR service addresses, and what an attacker could do with them. Each corner
//! case cites the Istio source it mirrors (istio/ztunnel `src/state/service.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_xds::pb::workload as wl;

use super::super::Visibility;
use super::tests_131::{addr, na, s, seen, store, svc, w, wk};

// Istio `ServiceMatch::find_best_match`: the client's namespace first, then `canonical`, then
// the first; `proto/workload.proto`: "canonical marks this Service as taking priority during
// hostname lookups, when there is not a match in the namespace of the client".
#[test]
fn canonical_chooses_among_services_sharing_a_host_and_a_vip() {
    let mut st = store("");
    let mut canon = svc(
        "b",
        "shared",
        "shared.example",
        vec![na("", [127, 223, 20, 1], None)],
    );
    canon.canonical = true;
    st.apply_addresses(
        vec![
            s(svc(
                "a",
                "shared",
                "shared.example",
                vec![na("", [127, 223, 20, 1], None)],
            )),
            s(canon),
            s(svc(
                "c",
                "shared",
                "shared.example",
                vec![na("", [127, 223, 20, 1], None)],
            )),
        ],
        vec![],
    );
    let state = st.build();
    let host = |ns: &str| {
        let sp = state
            .service_by_host_for_client("Shared.Example", 80, ns)
            .unwrap();
        sp.service.namespace.clone()
    };
    assert_eq!(host("a"), "a", "the client's own namespace wins");
    assert_eq!(host("c"), "c");
    assert_eq!(host("z"), "b", "else the canonical one");
    assert_eq!(seen(&state, "127.223.20.1:80", "a").unwrap(), "a/shared");
    assert_eq!(seen(&state, "127.223.20.1:80", "z").unwrap(), "b/shared");
    // Without a client (a waypoint's lookup): canonical first.
    assert_eq!(
        state
            .service_by_vip(addr("127.223.20.1:80"))
            .unwrap()
            .service
            .namespace,
        "b"
    );
    assert_eq!(
        state
            .service_by_host("shared.example", 80)
            .unwrap()
            .service
            .namespace,
        "b"
    );
}

// Istio `get_best_by_vip` / `visible_to`: a NAMESPACE service is hidden from other
// namespaces; an exact VIP hidden from the client falls through to CIDR matching
// (`visibility_filtered_exact_vip_falls_through_to_cidr`); without a client namespace
// (inbound) nothing is filtered.
#[test]
fn namespace_visibility_hides_the_vip_from_other_namespaces() {
    let mut st = store("");
    let mut private = svc(
        "a",
        "private",
        "private.a.svc",
        vec![na("", [127, 223, 30, 1], None)],
    );
    private.visibility = wl::service::Visibility::Namespace as i32;
    let public_cidr = svc(
        "p",
        "wide",
        "wide.p.svc",
        vec![na("", [127, 223, 30, 0], Some(24))],
    );
    st.apply_addresses(vec![s(private), s(public_cidr)], vec![]);
    let state = st.build();
    assert_eq!(seen(&state, "127.223.30.1:80", "a").unwrap(), "a/private");
    assert_eq!(
        seen(&state, "127.223.30.1:80", "b").unwrap(),
        "p/wide",
        "hidden: the client in b falls through to the public CIDR"
    );
    assert_eq!(
        state
            .service_by_vip(addr("127.223.30.1:80"))
            .unwrap()
            .service
            .name,
        "private"
    );
    let svc = state.service_by_hostname("private.a.svc").unwrap();
    assert_eq!(svc.visibility, Visibility::Namespace);
    assert!(svc.visibility.visible_to(&svc.namespace, "a"));
    assert!(!svc.visibility.visible_to(&svc.namespace, "b"));
    assert!(
        state
            .service_by_host_for_client("private.a.svc", 80, "b")
            .is_none()
    );
    assert!(
        state
            .service_by_host_for_client("private.a.svc", 80, "a")
            .is_some()
    );
}

// Attacker: a workload in namespace b addresses the NAMESPACE service's VIP directly: the
// VIP is not a service for it (nothing else there: None).
#[test]
fn another_namespace_cannot_reach_a_namespace_service_by_vip() {
    let mut st = store("");
    let mut private = svc(
        "a",
        "private",
        "private.a.svc",
        vec![na("", [127, 223, 31, 1], None)],
    );
    private.visibility = wl::service::Visibility::Namespace as i32;
    st.apply_addresses(
        vec![
            w(wk(
                "a",
                "backend",
                [127, 223, 31, 10],
                "",
                &["a/private.a.svc"],
            )),
            s(private),
        ],
        vec![],
    );
    let state = st.build();
    assert!(
        state
            .service_for_client(addr("127.223.31.1:80"), "b")
            .is_none()
    );
    assert!(
        state
            .service_for_client(addr("127.223.31.1:80"), "a")
            .is_some()
    );
    // An empty namespace is no wildcard.
    assert!(
        state
            .service_for_client(addr("127.223.31.1:80"), "")
            .is_none()
    );
}

// Istio `get_best_by_cidr_vip`: longest prefix wins; an exact VIP beats any CIDR; a CIDR in
// the client's namespace beats a longer one elsewhere (rank `(in_namespace, prefix_len,
// canonical)`); a host address with `length` 32 is a VIP (`Some(pl) if pl != max_prefix`).
#[test]
fn cidr_addresses_match_the_longest_prefix() {
    let mut st = store("");
    st.apply_addresses(
        vec![
            s(svc(
                "p",
                "wide",
                "wide.svc",
                vec![na("", [127, 223, 0, 0], Some(16))],
            )),
            s(svc(
                "p",
                "narrow",
                "narrow.svc",
                vec![na("", [127, 223, 7, 0], Some(24))],
            )),
            s(svc(
                "p",
                "exact",
                "exact.svc",
                vec![na("", [127, 223, 7, 7], Some(32))],
            )),
            s(svc(
                "q",
                "mine",
                "mine.svc",
                vec![na("", [127, 223, 0, 0], Some(16))],
            )),
            s(svc("p", "v6", "v6.svc", vec![])),
        ],
        vec![],
    );
    let state = st.build();
    assert_eq!(seen(&state, "127.223.7.9:80", "x").unwrap(), "p/narrow");
    assert_eq!(seen(&state, "127.223.8.9:80", "x").unwrap(), "p/wide");
    assert_eq!(seen(&state, "127.223.7.7:80", "x").unwrap(), "p/exact");
    assert_eq!(
        seen(&state, "127.223.7.9:80", "q").unwrap(),
        "q/mine",
        "the client's namespace beats a longer prefix"
    );
    assert_eq!(seen(&state, "127.224.0.1:80", "x"), None);
    assert_eq!(seen(&state, "127.223.7.9:81", "x"), None, "no such port");
    assert_eq!(
        state
            .service_at(addr("127.223.7.9:80"))
            .unwrap()
            .service
            .name,
        "narrow"
    );
}

#[test]
fn ipv6_cidr_and_host_bits_are_truncated() {
    let mut st = store("");
    let mut v6 = svc("p", "v6", "v6.svc", vec![]);
    v6.addresses = vec![wl::NetworkAddress {
        network: String::new(),
        address: "fd00::1:2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec(),
        length: Some(64),
    }];
    // Host bits set in a CIDR (127.223.40.5/24): the network is 127.223.40.0/24.
    let sloppy = svc(
        "p",
        "sloppy",
        "sloppy.svc",
        vec![na("", [127, 223, 40, 5], Some(24))],
    );
    assert!(
        st.apply_addresses(vec![s(v6), s(sloppy)], vec![])
            .is_empty()
    );
    let state = st.build();
    assert_eq!(seen(&state, "[fd00::ffff]:80", "x").unwrap(), "p/v6");
    assert_eq!(seen(&state, "[fd01::1]:80", "x"), None);
    assert_eq!(seen(&state, "127.223.40.200:80", "x").unwrap(), "p/sloppy");
}

// Attacker (or a large mesh): 5 000 services in 5 000 namespaces share one VIP and host
// name. A lookup is one hash lookup whatever the count (ranked at build time), and each
// namespace still gets its own service; others get the canonical one.
#[test]
fn thousands_of_services_sharing_a_vip_cost_one_lookup() {
    let mut st = store("");
    let mut all = Vec::new();
    for i in 0..5000 {
        all.push(s(svc(
            &format!("ns{i}"),
            "shared",
            "shared.example",
            vec![na("", [127, 223, 80, 1], None)],
        )));
    }
    let mut canon = svc(
        "canon",
        "shared",
        "shared.example",
        vec![na("", [127, 223, 80, 1], None)],
    );
    canon.canonical = true;
    all.push(s(canon));
    assert!(st.apply_addresses(all, vec![]).is_empty());
    let t = tokio::time::Instant::now();
    let state = st.build();
    let built = t.elapsed();
    assert_eq!(
        seen(&state, "127.223.80.1:80", "ns1234").unwrap(),
        "ns1234/shared"
    );
    assert_eq!(
        seen(&state, "127.223.80.1:80", "elsewhere").unwrap(),
        "canon/shared"
    );
    let a = addr("127.223.80.1:80");
    let t = tokio::time::Instant::now();
    let mut hits = 0usize;
    for i in 0..100_000 {
        let ns = if i % 2 == 0 { "ns42" } else { "elsewhere" };
        hits += usize::from(state.service_for_client(a, ns).is_some());
    }
    let looked = t.elapsed();
    assert_eq!(hits, 100_000);
    eprintln!("5001 services on one VIP: build {built:?}, 100k lookups {looked:?}");
    // Unoptimized build on a shared 2-core machine: generous, but a scan of 5 000 candidates
    // per lookup (500M comparisons) would not fit.
    assert!(looked < std::time::Duration::from_secs(10), "{looked:?}");
}

// Attacker: CIDR services at every prefix length (and many per length) cannot make a lookup
// scan them: at most one probe per distinct length (33 for IPv4), longest first.
#[test]
fn cidr_lookups_are_bounded_by_the_prefix_lengths() {
    let mut st = store("");
    let mut all = Vec::new();
    for len in 8..=31u32 {
        for k in 0..100u8 {
            // 127.223.k.0/len for many k: many entries per length, few lengths.
            all.push(s(svc(
                "p",
                &format!("c{len}-{k}"),
                &format!("c{len}-{k}.svc"),
                vec![na("", [127, 223, k, 0], Some(len))],
            )));
        }
    }
    assert!(st.apply_addresses(all, vec![]).is_empty());
    let state = st.build();
    // 127.223.5.1 is in 127.223.5.0/31..24 and in every shorter one; the /31 wins.
    assert_eq!(seen(&state, "127.223.5.1:80", "x").unwrap(), "p/c31-5");
    // 127.223.200.9 is only in the /16 and shorter prefixes (the /16 holding k=0..99).
    assert_eq!(seen(&state, "127.223.200.9:80", "x").unwrap(), "p/c16-0");
    let t = tokio::time::Instant::now();
    for i in 0..100_000u32 {
        let a = std::net::SocketAddr::from(([127, 223, (i % 256) as u8, (i / 256) as u8], 80));
        assert!(state.service_for_client(a, "x").is_some());
    }
    let looked = t.elapsed();
    eprintln!("2 400 CIDR services, 24 lengths: 100k lookups {looked:?}");
    // At most 24 probes each (unoptimized build, shared machine: generous); a scan of the
    // 2 400 services per lookup would not fit.
    assert!(looked < std::time::Duration::from_secs(10), "{looked:?}");
}

// Attacker: a service in namespace `evil` on the same VIP and host as a NAMESPACE service of
// `a`, even marked canonical, never takes `a`'s clients (their own namespace ranks first),
// and `evil`'s own NAMESPACE service is invisible to `a`.
#[test]
fn another_namespace_cannot_shadow_a_namespace_service() {
    let mut st = store("");
    let mut mine = svc(
        "a",
        "db",
        "db.shared",
        vec![na("", [127, 223, 90, 1], None)],
    );
    mine.visibility = wl::service::Visibility::Namespace as i32;
    let mut evil = svc(
        "evil",
        "db",
        "db.shared",
        vec![na("", [127, 223, 90, 1], None)],
    );
    evil.canonical = true;
    let mut hidden = svc(
        "evil",
        "trap",
        "trap.shared",
        vec![na("", [127, 223, 90, 2], None)],
    );
    hidden.visibility = wl::service::Visibility::Namespace as i32;
    assert!(
        st.apply_addresses(
            vec![
                w(wk("a", "db-0", [127, 223, 90, 10], "", &["a/db.shared"])),
                s(mine),
                s(evil),
                s(hidden),
            ],
            vec![],
        )
        .is_empty()
    );
    let state = st.build();
    assert_eq!(seen(&state, "127.223.90.1:80", "a").unwrap(), "a/db");
    assert_eq!(
        state
            .service_by_host_for_client("DB.shared", 80, "a")
            .unwrap()
            .service
            .namespace,
        "a"
    );
    assert_eq!(seen(&state, "127.223.90.2:80", "a"), None);
    assert_eq!(
        state.service_by_hostname("trap.shared").unwrap().visibility,
        Visibility::Namespace
    );
}
