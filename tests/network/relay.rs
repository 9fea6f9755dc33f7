//! Our own relay server for tests: the `iroh-relay` crate's server (HTTPS relay and QUIC address
//! discovery), with a certificate of a private CA made for the test, whose PEM file the nodes
//! are told to trust (`--relay-ca`, `relay_ca_file`). Shared by the loopback integration test and
//! the NAT tests, which run it inside a namespace of its own.

#![allow(dead_code)]

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use iroh::RelayUrl;
use iroh_relay::server::{CertConfig, QuicConfig, RelayConfig, Server, ServerConfig, TlsConfig};

/// The UDP port iroh expects a relay's QUIC address discovery on.
pub const QAD_PORT: u16 = 7842;

/// A private CA and a server certificate it signed for one IP address.
pub struct RelayCerts {
    /// The CA certificate, PEM, as nodes are given it.
    pub ca_pem: String,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl RelayCerts {
    /// A new CA, and a certificate for `ip` signed by it.
    pub fn new(ip: IpAddr) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "iroh-raft test relay CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec![ip.to_string()])
            .expect("server params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        Self {
            ca_pem: ca.pem(),
            server_chain: vec![server.der().clone(), ca.der().clone()],
            server_key: server_key.serialize_der(),
        }
    }

    /// Writes the CA's PEM to `dir/relay-ca.pem` and returns the path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("relay-ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("writing the relay CA");
        path
    }

    fn server_config(&self) -> rustls::ServerConfig {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key.clone().into());
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(self.server_chain.clone(), key)
        .expect("server certificate and key")
    }
}

/// Starts a relay on `ip`: HTTPS on `https_port` (0: any), plain HTTP (captive portal checks)
/// on any port, QUIC address discovery on `qad_port` (iroh looks for it on [`QAD_PORT`]). Returns
/// the server and its URL.
pub async fn start_relay(
    ip: IpAddr,
    https_port: u16,
    qad_port: u16,
    certs: &RelayCerts,
) -> (Server, RelayUrl) {
    let tls = TlsConfig::new(
        SocketAddr::new(ip, https_port),
        CertConfig::Manual {
            server_config: certs.server_config(),
        },
    );
    let mut relay = RelayConfig::new(SocketAddr::new(ip, 0));
    relay.tls = Some(tls);
    relay.key_cache_capacity = Some(1024);
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    config.quic = Some(QuicConfig::new(SocketAddr::new(ip, qad_port)));
    let server = Server::spawn(config).await.expect("relay server starts");
    let https = server.https_addr().expect("HTTPS configured");
    let url: RelayUrl = format!("https://{https}").parse().expect("relay URL");
    (server, url)
}
