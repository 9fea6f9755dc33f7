//! Node identity and iroh endpoints: the secret key kept in a data dir, peer addresses in
//! `<endpoint-id>@<ip:port>` form, and an endpoint that works offline (no relays, no DNS or pkarr
//! lookups, no port mapping, bound to the given address only), or through relays of the
//! cluster's own ([`Relays`]): members behind NATs reach each other through them until a direct
//! path is punched.

use std::{fmt, net::SocketAddr, path::Path, str::FromStr};

use iroh::{
    Endpoint, EndpointAddr, EndpointId, RelayMap, RelayMode, RelayUrl, SecretKey,
    endpoint::{PortmapperConfig, presets},
};
use rustls::pki_types::{CertificateDer, pem::PemObject};

use crate::error::{BuildError, ConfigError};

/// File in the data dir that holds the node's secret key (32 raw bytes, mode 0600).
pub const SECRET_KEY_FILE: &str = "secret.key";

/// A peer's endpoint id and direct addresses, written `<endpoint-id>@<ip:port>[,<ip:port>…]`.
///
/// iroh dials by endpoint id (the peer's public key, which is also how it is authenticated); a
/// bare `ip:port` names no one and is refused with [`ConfigError::PlainSocketAddr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub EndpointAddr);

impl PeerAddr {
    /// The endpoint id.
    pub fn id(&self) -> EndpointId {
        self.0.id
    }
}

impl From<EndpointAddr> for PeerAddr {
    fn from(addr: EndpointAddr) -> Self {
        PeerAddr(addr)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.id)?;
        for (i, ip) in self.0.ip_addrs().enumerate() {
            write!(f, "{}{ip}", if i == 0 { '@' } else { ',' })?;
        }
        Ok(())
    }
}

impl FromStr for PeerAddr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidPeerAddress {
            given: s.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((id, addrs)) = s.split_once('@') else {
            let host_port = s
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if s.parse::<SocketAddr>().is_ok() || host_port {
                return Err(ConfigError::PlainSocketAddr {
                    given: s.to_owned(),
                });
            }
            let id = EndpointId::from_str(s).map_err(|_| invalid("not an endpoint id"))?;
            return Ok(PeerAddr(EndpointAddr::new(id)));
        };
        let id = EndpointId::from_str(id.trim())
            .map_err(|_| invalid("the part before '@' is not an endpoint id"))?;
        let mut addr = EndpointAddr::new(id);
        for part in addrs.split(',') {
            let ip: SocketAddr = part
                .trim()
                .parse()
                .map_err(|_| invalid("the part after '@' must be ip:port[,ip:port...]"))?;
            addr = addr.with_ip_addr(ip);
        }
        Ok(PeerAddr(addr))
    }
}

/// Loads the secret key from `data_dir`, creating the directory and a new key on first use.
pub fn load_or_create_secret_key(data_dir: &Path) -> Result<SecretKey, BuildError> {
    let data_dir_err = |source| BuildError::DataDir {
        path: data_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(data_dir_err)?;
    let path = data_dir.join(SECRET_KEY_FILE);
    match read_key(&path) {
        Err(BuildError::DataDir { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let key = SecretKey::generate();
            // The new key's public half names the file it is written to first: no other
            // process writes that one.
            let tmp = path.with_extension(format!("tmp.{}", key.public().fmt_short()));
            match create_private(&path, &tmp, &key.to_bytes()) {
                Ok(()) => Ok(key),
                // Another process created it meanwhile (two CLI commands run at once on a new
                // key dir): its key is the one kept, so it is the one used.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(&path),
                Err(e) => Err(data_dir_err(e)),
            }
        }
        other => other,
    }
}

fn read_key(path: &Path) -> Result<SecretKey, BuildError> {
    let bytes = std::fs::read(path).map_err(|source| BuildError::DataDir {
        path: path.parent().unwrap_or(path).to_owned(),
        source,
    })?;
    let bytes: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| BuildError::Identity {
            path: path.to_owned(),
            reason: format!("expected 32 bytes, found {}", bytes.len()),
        })?;
    Ok(SecretKey::from_bytes(&bytes))
}

/// Creates `path` with `bytes`, readable by its owner only, complete or not at all: written to
/// `tmp` (a file of this process's own), synced, then linked into place, which fails with
/// `AlreadyExists` when another process got there first (never overwriting its key).
fn create_private(path: &Path, tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(tmp, path));
    let _ = std::fs::remove_file(tmp);
    linked?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Concurrent bidirectional streams a peer may open on one connection: room for the management
/// protocol's lanes (at most 64 served at once) and subscriptions (32), with some to spare.
pub const MAX_STREAMS: u32 = 128;

/// Binds an iroh endpoint that needs no internet: relays off, no address lookup services, no
/// port mapping, minimal network probing, IP transport on `bind` only. Peers are dialled by the
/// direct addresses in their [`PeerAddr`].
pub async fn bind_offline_endpoint(
    secret_key: SecretKey,
    bind: SocketAddr,
) -> Result<Endpoint, BuildError> {
    bind_offline_endpoint_with(secret_key, bind, transport_config()).await
}

/// [`bind_offline_endpoint`] with a QUIC transport configuration of the caller's (windows,
/// stream limits).
pub async fn bind_offline_endpoint_with(
    secret_key: SecretKey,
    bind: SocketAddr,
    transport: iroh::endpoint::QuicTransportConfig,
) -> Result<Endpoint, BuildError> {
    bind_endpoint_with_relays(secret_key, bind, transport, &Relays::none()).await
}

/// The relay servers an endpoint uses, and the extra certificate authorities it trusts for
/// them.
///
/// A relay forwards QUIC packets between endpoints that cannot reach each other directly (both
/// behind NATs, say) and tells each endpoint the address it is seen at, so that the two can punch
/// a direct path; it sees which endpoint ids talk to which, and how much, but not what they say
/// (the packets are end-to-end encrypted QUIC) and it admits no one to the cluster (admission
/// rests on the members' keys, as always). Each endpoint keeps a connection to one of them, its
/// home relay; every member of a cluster should use the same relays, since a peer is dialled
/// through this node's relays.
///
/// A relay's URL is its HTTPS address (`https://relay.example.com`); its QUIC address discovery
/// is expected on UDP port 7842 of the same host, as the `iroh-relay` server runs it.
#[derive(Debug, Clone, Default)]
pub struct Relays {
    /// The relays' URLs (empty: no relays, direct addresses only).
    pub urls: Vec<RelayUrl>,
    /// Certificate authorities trusted for the relays' TLS certificates besides the usual web
    /// roots (a relay with a certificate of a private CA, or a self-signed one).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Relays {
    /// No relays.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// `urls`, trusting the PEM certificates in `ca` (when given) besides the web roots.
    pub fn with_ca_file(urls: Vec<RelayUrl>, ca: Option<&Path>) -> Result<Self, ConfigError> {
        let extra_roots = match ca {
            Some(path) => read_relay_ca(path)?,
            None => Vec::new(),
        };
        Ok(Self { urls, extra_roots })
    }
}

/// Reads the PEM certificates in `path` (one or more `BEGIN CERTIFICATE` blocks), to trust for
/// relays ([`Relays::extra_roots`]).
pub fn read_relay_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let invalid = |reason: String| ConfigError::RelayCa {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no BEGIN CERTIFICATE block in it".into()));
    }
    Ok(certs)
}

/// Binds an endpoint on `bind` like [`bind_offline_endpoint_with`], but reachable through
/// `relays` when there are any: the endpoint connects to its home relay, learns the address it
/// is seen at from the relays' QUIC address discovery, and dials peers through the relays while
/// it tries direct paths (hole punching). Still no DNS or pkarr lookups and no port mapping.
pub async fn bind_endpoint_with_relays(
    secret_key: SecretKey,
    bind: SocketAddr,
    transport: iroh::endpoint::QuicTransportConfig,
    relays: &Relays,
) -> Result<Endpoint, BuildError> {
    let bind_err = |e: &dyn fmt::Display| BuildError::Bind {
        addr: bind,
        reason: e.to_string(),
    };
    let ca = iroh::tls::CaTlsConfig::default().with_extra_roots(relays.extra_roots.clone());
    let relay_mode = match relays.is_empty() {
        true => RelayMode::Disabled,
        false => RelayMode::Custom(RelayMap::from_iter(relays.urls.iter().cloned())),
    };
    Endpoint::builder(presets::Minimal)
        .secret_key(secret_key)
        .relay_mode(relay_mode)
        .ca_tls_config(ca)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr(bind)
        .map_err(|e| bind_err(&e))?
        .portmapper_config(PortmapperConfig::Disabled)
        .net_report_config(iroh::NetReportConfig::minimal())
        .transport_config(transport)
        .bind()
        .await
        .map_err(|e| bind_err(&e))
}

/// The congestion controller of a node's QUIC connections.
///
/// Measured with `examples/real_network` (3 nodes, 256 clients): with 1% packet loss Cubic,
/// which reads every loss as congestion and backs off, carried 1.8–1.9k writes/s at 10 ms round
/// trips and 650–730 at 50 ms, BBR 5.2–7.7k and 1.4–2.2k. Without loss BBR was no better, and at
/// 64 clients its p99 reached 200–440 ms (Cubic's: 20–110 ms), so Cubic is the default. See the
/// README's real-network table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CongestionControl {
    /// Cubic (RFC 9438), QUIC's usual default: backs off on every loss.
    #[default]
    Cubic,
    /// BBR (v3, as the `noq` QUIC stack implements it): paces by the measured bandwidth and
    /// round trip, so random loss on a long link does not collapse throughput.
    Bbr,
}

impl std::str::FromStr for CongestionControl {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "cubic" => Ok(Self::Cubic),
            "bbr" => Ok(Self::Bbr),
            _ => Err(ConfigError::InvalidCongestionControl {
                given: s.to_owned(),
            }),
        }
    }
}

/// The stream limits every endpoint of ours uses, and the congestion controller `cc`.
pub(crate) fn transport_config_with(cc: CongestionControl) -> iroh::endpoint::QuicTransportConfig {
    let builder = iroh::endpoint::QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(iroh::endpoint::VarInt::from_u32(MAX_STREAMS));
    match cc {
        CongestionControl::Cubic => builder,
        CongestionControl::Bbr => builder.congestion_controller_factory(std::sync::Arc::new(
            noq_proto::congestion::Bbr3Config::default(),
        )),
    }
    .build()
}

/// [`transport_config_with`] the default controller.
pub(crate) fn transport_config() -> iroh::endpoint::QuicTransportConfig {
    transport_config_with(CongestionControl::default())
}

/// Loads (or creates) the key in `data_dir` and binds an offline endpoint on `bind`: the usual
/// first step when starting several nodes in one process, whose addresses must be known before
/// any of them is built.
pub async fn bind_endpoint(data_dir: &Path, bind: SocketAddr) -> Result<Endpoint, BuildError> {
    let key = load_or_create_secret_key(data_dir)?;
    bind_offline_endpoint(key, bind).await
}

/// Closes `endpoint`, waiting at most `grace`; the rest of the close (QUIC's wait for
/// acknowledgements, up to ~3 s for peers that are down or dials that were dropped) goes on in
/// the background. `Endpoint::close` does the work only in its first call, so that call is the
/// one left to run to its end.
pub(crate) async fn close_within(endpoint: &Endpoint, grace: std::time::Duration) {
    let endpoint = endpoint.clone();
    let closing = tokio::spawn(async move { endpoint.close().await });
    let _ = tokio::time::timeout(grace, closing).await;
}

/// The address peers should use for `endpoint`: its id and its bound sockets.
pub fn endpoint_peer_addr(endpoint: &Endpoint) -> PeerAddr {
    let addr = endpoint
        .bound_sockets()
        .into_iter()
        .fold(EndpointAddr::new(endpoint.id()), |a, ip| a.with_ip_addr(ip));
    PeerAddr(addr)
}

pub(crate) use iroh_raft_actors::wire::endpoint_addr_from_wire as addr_from_wire;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addr_parses_and_prints() {
        let id = SecretKey::generate().public();
        let text = format!("{id}@127.0.0.1:7000,127.0.0.1:7001");
        let addr: PeerAddr = text.parse().unwrap();
        assert_eq!(addr.id(), id);
        assert_eq!(addr.0.ip_addrs().count(), 2);
        assert_eq!(addr.to_string(), text);
        assert!(matches!(
            "127.0.0.1:8080".parse::<PeerAddr>(),
            Err(ConfigError::PlainSocketAddr { .. })
        ));
        assert!(matches!(
            "nonsense@127.0.0.1:1".parse::<PeerAddr>(),
            Err(ConfigError::InvalidPeerAddress { .. })
        ));
        assert!(matches!(
            format!("{id}@not-an-addr").parse::<PeerAddr>(),
            Err(ConfigError::InvalidPeerAddress { .. })
        ));
    }

    #[test]
    fn secret_key_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_secret_key(dir.path()).unwrap();
        let b = load_or_create_secret_key(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        std::fs::write(dir.path().join(SECRET_KEY_FILE), b"short").unwrap();
        assert!(matches!(
            load_or_create_secret_key(dir.path()),
            Err(BuildError::Identity { .. })
        ));
    }

    #[test]
    fn processes_creating_the_key_at_once_all_get_the_one_kept() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let keys: Vec<_> = (0..8)
                .map(|_| {
                    let (dir, barrier) = (dir.path().to_owned(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        load_or_create_secret_key(&dir).unwrap().public()
                    })
                })
                .collect();
            let keys: Vec<_> = keys.into_iter().map(|t| t.join().unwrap()).collect();
            let kept = load_or_create_secret_key(dir.path()).unwrap().public();
            assert!(keys.iter().all(|k| *k == kept), "{keys:?}");
            let files = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(files, 1, "temporary files left behind");
        }
    }
}
