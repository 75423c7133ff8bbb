//! Resolves the client's IP once per request, for rate limiting and for the `ip` of event
//! metadata, and stores it in the request extensions as [`ClientIp`].
//!
//! The IP is the socket peer (`ConnectInfo<SocketAddr>`, present when the binary serves with
//! `into_make_service_with_connect_info::<SocketAddr>()`), unless the peer is a trusted proxy
//! ([`TrustedProxies`]): then `X-Forwarded-For` is read from the right, past every trusted
//! proxy, and the first address that is not one is the client. Each proxy appends the address it
//! received from, so entries left of that one were written by the client and prove nothing.
//! Without a peer (in-process tests) the IP is the unspecified address `0.0.0.0`.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's IP address as resolved by [`client_ip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Which peers are proxies whose `X-Forwarded-For` entries are believed
/// (`SPARC_TRUST_FORWARDED_FOR`): `false` (none, the default), `true` (the socket peer, whatever
/// it is: one proxy in front), or a comma-separated list of networks and addresses
/// (`10.0.0.0/8,127.0.0.1`: a chain of proxies in those networks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TrustedProxies {
    /// Forwarded headers are ignored.
    #[default]
    None,
    /// The socket peer is the one proxy: the rightmost entry is the client.
    Peer,
    /// Proxies are the addresses in these networks.
    Networks(Arc<[IpNet]>),
}

impl TrustedProxies {
    /// Proxies in `networks` (`"10.0.0.0/8"`, or a single address).
    ///
    /// # Errors
    /// The first entry that is neither a network nor an address.
    pub fn networks<'a>(networks: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let parsed: Vec<IpNet> = networks
            .into_iter()
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map_err(|_| format!("not a network or an address: {entry:?}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(if parsed.is_empty() {
            Self::None
        } else {
            Self::Networks(parsed.into())
        })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        match self {
            Self::None => false,
            Self::Peer => true,
            Self::Networks(networks) => networks.iter().any(|network| network.contains(&ip)),
        }
    }

    /// The client behind the peer `peer`, from the `X-Forwarded-For` entries (oldest first).
    fn client(&self, peer: IpAddr, forwarded: &[IpAddr]) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        match self {
            Self::None => peer,
            Self::Peer => forwarded.last().copied().unwrap_or(peer),
            Self::Networks(_) => forwarded
                .iter()
                .rev()
                .find(|ip| !self.trusts(**ip))
                .or(forwarded.first())
                .copied()
                .unwrap_or(peer),
        }
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Switch(bool),
            List(Vec<String>),
            Text(String),
        }
        match Given::deserialize(deserializer)? {
            Given::Switch(false) => Ok(Self::None),
            Given::Switch(true) => Ok(Self::Peer),
            Given::Text(text) => match text.trim() {
                "false" | "" => Ok(Self::None),
                "true" => Ok(Self::Peer),
                list => Self::networks(list.split(',')).map_err(serde::de::Error::custom),
            },
            Given::List(list) => {
                Self::networks(list.iter().map(String::as_str)).map_err(serde::de::Error::custom)
            }
        }
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => serializer.serialize_bool(false),
            Self::Peer => serializer.serialize_bool(true),
            Self::Networks(networks) => {
                let list: Vec<String> = networks.iter().map(ToString::to_string).collect();
                serializer.serialize_str(&list.join(","))
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    /// The resolved IP; outside the middleware, the socket peer or `0.0.0.0`.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or_else(|| resolve(&parts.headers, &parts.extensions, &TrustedProxies::None)))
    }
}

fn resolve(
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    trusted: &TrustedProxies,
) -> ClientIp {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| {
            addr.ip()
        })
        .to_canonical();
    if *trusted == TrustedProxies::None {
        return ClientIp(peer);
    }
    ClientIp(trusted.client(peer, &forwarded_for(headers)))
}

/// Every `X-Forwarded-For` entry, oldest first, with or without a port; an entry that is no
/// address ends the list there (everything left of it is unreliable anyway).
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut ips: Vec<IpAddr> = entries
        .iter()
        .rev()
        .map_while(|entry| {
            entry
                .parse::<IpAddr>()
                .ok()
                .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
                .map(|ip| ip.to_canonical())
        })
        .collect();
    ips.reverse();
    ips
}

/// The middleware; install with `axum::middleware::from_fn_with_state(trusted, client_ip)`.
pub async fn client_ip(
    State(trusted): State<TrustedProxies>,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = resolve(request.headers(), request.extensions(), &trusted);
    request.extensions_mut().insert(ip);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::routing::get;
    use tower::ServiceExt;

    async fn seen_ip(trust: TrustedProxies, peer: Option<&str>, forwarded: Option<&str>) -> String {
        let app = Router::new()
            .route(
                "/",
                get(|ClientIp(ip): ClientIp| async move { ip.to_string() }),
            )
            .layer(axum::middleware::from_fn_with_state(trust, client_ip));
        let mut request = axum::http::Request::get("/");
        if let Some(value) = forwarded {
            request = request.header(X_FORWARDED_FOR, value);
        }
        let mut request = request.body(Body::empty()).expect("valid");
        if let Some(peer) = peer {
            let addr: SocketAddr = peer.parse().expect("a socket address");
            request.extensions_mut().insert(ConnectInfo(addr));
        }
        let response = app.oneshot(request).await.expect("infallible");
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("readable");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn the_socket_peer_is_the_client_by_default() {
        assert_eq!(
            seen_ip(TrustedProxies::None, Some("203.0.113.7:5000"), None).await,
            "203.0.113.7"
        );
    }

    #[tokio::test]
    async fn x_forwarded_for_is_ignored_unless_trusted() {
        let ip = seen_ip(
            TrustedProxies::None,
            Some("203.0.113.7:5000"),
            Some("198.51.100.1"),
        )
        .await;
        assert_eq!(ip, "203.0.113.7");
    }

    fn networks(list: &str) -> TrustedProxies {
        TrustedProxies::networks(list.split(',')).expect("networks")
    }

    #[tokio::test]
    async fn behind_one_trusted_peer_the_rightmost_entry_is_the_client() {
        let peer = TrustedProxies::Peer;
        let ip = seen_ip(
            peer.clone(),
            Some("10.0.0.1:5000"),
            Some("6.6.6.6, 198.51.100.1"),
        )
        .await;
        assert_eq!(
            ip, "198.51.100.1",
            "the client's own entry on the left is ignored"
        );
        let ip = seen_ip(peer, Some("10.0.0.1:5000"), Some("198.51.100.1:4711")).await;
        assert_eq!(ip, "198.51.100.1");
    }

    #[tokio::test]
    async fn behind_a_chain_of_trusted_networks_the_first_untrusted_from_the_right_is_the_client() {
        let trusted = networks("10.0.0.0/8, 192.168.1.1");
        let ip = seen_ip(
            trusted.clone(),
            Some("10.0.0.1:5000"),
            Some("6.6.6.6, 198.51.100.1, 192.168.1.1, 10.2.3.4"),
        )
        .await;
        assert_eq!(ip, "198.51.100.1");
        // A peer outside the networks is the client, whatever it forwards.
        let ip = seen_ip(
            trusted.clone(),
            Some("203.0.113.7:5000"),
            Some("198.51.100.1"),
        )
        .await;
        assert_eq!(ip, "203.0.113.7");
        // Only proxies: the oldest entry.
        let ip = seen_ip(trusted, Some("10.0.0.1:5000"), Some("10.9.9.9, 10.0.0.2")).await;
        assert_eq!(ip, "10.9.9.9");
    }

    #[tokio::test]
    async fn an_unparsable_forwarded_for_falls_back_to_the_peer() {
        assert_eq!(
            seen_ip(TrustedProxies::Peer, Some("10.0.0.1:5000"), Some("unknown")).await,
            "10.0.0.1"
        );
    }

    #[test]
    fn the_setting_takes_a_switch_or_a_list_of_networks() {
        let parse = |json: &str| serde_json::from_str::<TrustedProxies>(json);
        assert_eq!(parse("false").unwrap(), TrustedProxies::None);
        assert_eq!(parse("true").unwrap(), TrustedProxies::Peer);
        assert_eq!(parse(r#""true""#).unwrap(), TrustedProxies::Peer);
        assert_eq!(
            parse(r#""10.0.0.0/8,::1""#).unwrap(),
            networks("10.0.0.0/8,::1")
        );
        assert_eq!(parse(r#"["10.0.0.0/8"]"#).unwrap(), networks("10.0.0.0/8"));
        assert!(parse(r#""10.0.0.0/8,not-an-ip""#).is_err());
    }

    #[tokio::test]
    async fn ipv4_mapped_ipv6_peers_are_reported_as_ipv4() {
        assert_eq!(
            seen_ip(TrustedProxies::None, Some("[::ffff:192.0.2.9]:80"), None).await,
            "192.0.2.9"
        );
    }

    #[tokio::test]
    async fn without_connect_info_the_ip_is_unspecified() {
        assert_eq!(seen_ip(TrustedProxies::None, None, None).await, "0.0.0.0");
    }
}
