//! gRPC channels to the control plane (istiod's xDS and CA on 15012): plaintext `http://`
//! for tests and local control planes, or TLS (`https://`) verified against given roots with
//! the aws-lc-rs provider, HTTP/2 keepalive, and bounded connects.
//!
//! [`ControlPlane::channel`] connects now (one connection per call, as the CA client uses
//! it); [`ControlPlane::lazy_channel`] returns a channel that connects on first use and
//! reconnects by itself, as a long-lived xDS client (`mesh_xds::Client`) wants it.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;

use crate::Error;

/// Where and how to reach a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// `http://host:port` or `https://host:port`.
    pub address: String,
    /// PEM roots that verify the control plane's certificate (required for https).
    pub ca_pem: Option<Vec<u8>>,
    /// Name its certificate must carry (default: the address's host; istiod's is
    /// `istiod.istio-system.svc`).
    pub server_name: Option<String>,
    /// Limit for TCP, TLS and the HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval (`None`: no pings).
    pub keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
}

/// The IO a TLS connection to the control plane gives the channel.
type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Connects TCP then TLS to the URI's authority, checking `host` in the certificate.
type TlsConnector = tower::util::BoxCloneService<http::Uri, TlsIo, std::io::Error>;

impl ControlPlane {
    /// `address` with a 10 s connect timeout and no keepalive.
    pub fn new(address: impl Into<String>) -> ControlPlane {
        ControlPlane {
            address: address.into(),
            ca_pem: None,
            server_name: None,
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(10),
        }
    }

    /// Connects.
    pub async fn channel(&self) -> Result<tonic::transport::Channel, String> {
        let endpoint = self.endpoint().map_err(|e| e.to_string())?;
        let connect = async {
            match self.tls_connector().map_err(|e| e.to_string())? {
                None => endpoint.connect().await.map_err(|e| e.to_string()),
                Some(connector) => endpoint
                    .connect_with_connector(connector)
                    .await
                    .map_err(|e| e.to_string()),
            }
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                format!(
                    "{}: no answer within {:?}",
                    self.address, self.connect_timeout
                )
            })?
    }

    /// A channel that connects on first use (TCP and TLS bounded by `connect_timeout`) and
    /// reconnects by itself after the connection breaks, e.g. when keepalive pings go
    /// unanswered. Fails only on an unusable address or TLS settings; must be called within
    /// a tokio runtime.
    pub fn lazy_channel(&self) -> Result<tonic::transport::Channel, Error> {
        let endpoint = self.endpoint()?;
        Ok(match self.tls_connector()? {
            None => endpoint.connect_lazy(),
            Some(connector) => endpoint.connect_with_connector_lazy(connector),
        })
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::ControlPlane {
            address: self.address.clone(),
            reason: reason.into(),
        }
    }

    /// The endpoint with the connect timeout and keepalive settings.
    fn endpoint(&self) -> Result<tonic::transport::Endpoint, Error> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.address.clone())
            .map_err(|e| self.error(e.to_string()))?
            .connect_timeout(self.connect_timeout);
        if let Some(i) = self.keepalive_interval {
            endpoint = endpoint
                .http2_keep_alive_interval(i)
                .keep_alive_timeout(self.keepalive_timeout)
                .keep_alive_while_idle(true);
        }
        Ok(endpoint)
    }

    /// The TLS connector for an `https://` address; `None` for plaintext.
    fn tls_connector(&self) -> Result<Option<TlsConnector>, Error> {
        let uri: http::Uri = self
            .address
            .parse()
            .map_err(|e: http::uri::InvalidUri| self.error(e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Ok(None);
        }
        let tls = self.tls_config()?;
        let host = self
            .server_name
            .clone()
            .or_else(|| uri.host().map(str::to_owned))
            .ok_or_else(|| self.error("no host in the address"))?;
        let connector = tower::service_fn(move |uri: http::Uri| {
            let tls = tls.clone();
            let host = host.clone();
            async move {
                let authority = uri
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .ok_or_else(|| std::io::Error::other("no authority"))?;
                let tcp = tokio::net::TcpStream::connect(authority).await?;
                let _ = tcp.set_nodelay(true);
                let name = rustls_pki_types::ServerName::try_from(host)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        Ok(Some(TlsConnector::new(connector)))
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let pem = self
            .ca_pem
            .as_deref()
            .ok_or_else(|| self.error("https needs the control plane's CA certificate"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| self.error(format!("CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| self.error(format!("CA certificate: {e}")))?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::cert::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(tls))
    }
}
