//! With the `fips` feature, every mesh TLS configuration runs on aws-lc's FIPS 140-3 module
//! with FIPS-approved algorithms only (rustls' `fips()`). Built and run by
//! `scripts/check-fips.sh` (the FIPS module needs CMake and Go, so not in the default build).

#![cfg(feature = "fips")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_identity::{CertStore, LocalCa, SpiffeId, TrustDomain, client_config, server_config};

#[test]
fn mesh_tls_configs_are_fips_approved() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path()).unwrap();
    let td: TrustDomain = "cluster.local".parse().unwrap();
    let id = SpiffeId::new(&td, "ns", "server").unwrap();
    let store = CertStore::fixed(ca.issue(&id).unwrap());
    let bundle = ca.trust_bundle().unwrap();
    assert!(mesh_identity::provider().fips(), "the crypto provider");
    let server = server_config(store.clone(), &bundle, vec![td]).unwrap();
    assert!(server.fips(), "the HBONE server configuration");
    let client = client_config(store, &bundle, id).unwrap();
    assert!(client.fips(), "the HBONE client configuration");
}
