//! Watches a control plane's workload API: `cargo run -p mesh-xds --example watch -- ADDRESS
//! [TOKEN_FILE]` prints every workload, service and authorization as it arrives (ACKing each
//! update), until Ctrl-C. `ADDRESS` is `http://host:port` (e.g. a port-forwarded istiod's
//! plaintext 15010). For TLS (istiod's 15012), build the channel with the CA's roots instead,
//! e.g. with `mesh_identity::grpc::ControlPlane::lazy_channel` as the data plane does.

use std::sync::Arc;

use mesh_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, Client, Config, NodeInfo, Typed, pb};

fn say(line: String) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:15010".into());
    let channel = tonic::transport::Endpoint::from_shared(address.clone())?
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy();
    let mut config = Config::new(
        address,
        NodeInfo::ztunnel("127.0.0.1", "watch", "istio-system", "local", "Kubernetes"),
    );
    config.token_file = args.next().map(Into::into);
    let addresses = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, |upserts, removes| {
        for (name, a) in upserts {
            match a.r#type {
                Some(pb::workload::address::Type::Workload(w)) => say(format!(
                    "workload {name}: {}/{} sa={}",
                    w.namespace, w.name, w.service_account
                )),
                Some(pb::workload::address::Type::Service(s)) => say(format!(
                    "service {name}: {} ({} ports)",
                    s.hostname,
                    s.ports.len()
                )),
                None => say(format!("address {name}: empty")),
            }
        }
        for name in removes {
            say(format!("removed {name}"));
        }
        Vec::new()
    });
    let authz =
        Typed::<pb::security::Authorization, _>::new(AUTHORIZATION_TYPE, |upserts, removes| {
            for (name, p) in upserts {
                say(format!(
                    "authorization {name}: {} rules, action {}",
                    p.rules.len(),
                    p.action
                ));
            }
            for name in removes {
                say(format!("removed {name}"));
            }
            Vec::new()
        });
    let client = Client::start(channel, config, vec![Arc::new(addresses), Arc::new(authz)]);
    let _ = tokio::signal::ctrl_c().await;
    say(format!("{:?}", client.status()));
    client.stop();
    Ok(())
}
