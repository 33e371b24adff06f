//! The identity layer on its own: a local CA, a rotating certificate store, and the rustls
//! configurations a mesh proxy would use.
//!
//! Run: `cargo run -p mesh-identity --example local_ca`

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_identity::{
    CertManager, LocalCa, RotationPolicy, SpiffeId, client_config, refresh_delay, server_config,
    verify_chain,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A self-signed root in a state directory (root-key.pem is written with mode 0600).
    let (ca, created) = LocalCa::load_or_create(dir.path())?;
    eprintln!("CA created: {created}, in {}", dir.path().display());
    let ca = ca.with_ttl(Duration::from_secs(3600));
    let bundle = ca.trust_bundle()?;

    // Strictly parsed Istio identities.
    let web: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse()?;
    let db: SpiffeId = "spiffe://cluster.local/ns/shop/sa/db".parse()?;
    assert!(
        "spiffe://cluster.local/ns/shop/sa/web/extra"
            .parse::<SpiffeId>()
            .is_err()
    );

    // A manager keeps one rotating store per identity (renewed at half-life).
    let manager = CertManager::new(Arc::new(ca), RotationPolicy::default());
    let web_store = manager.store(&web).await?;
    let cert = web_store.current();
    let id = verify_chain(&bundle, cert.chain())?;
    let renew_in = refresh_delay(SystemTime::now(), cert.not_before(), cert.not_after());
    eprintln!(
        "{id}: verified against the root; renewal in {} s",
        renew_in.as_secs()
    );

    // rustls configurations: a server that requires mesh client certificates from
    // cluster.local, and a client that only accepts a server proving exactly `db`.
    let _server = server_config(web_store.clone(), &bundle, vec![web.trust_domain()])?;
    let _client = client_config(web_store, &bundle, db.clone())?;
    eprintln!("server and client TLS 1.3 configs ready (ALPN h2, exact peer {db})");
    manager.shutdown().await;
    Ok(())
}
