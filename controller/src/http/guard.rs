//! What bounds the API's costly or abusable paths, shared by the handlers through
//! [`super::AppState`]: password hashing ([`Passwords`]), the client address a login limit counts
//! against ([`ClientAddr`]: the peer, or — only when the peer is a trusted proxy — the address
//! the proxy forwarded), and the open streams (log follows, the live task feed) per user
//! ([`Guard::open_stream`]; counted by each controller replica in its own memory).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::http::request::Parts;
use axum::serve::IncomingStream;

use super::auth::Passwords;
use super::{ApiError, AppState};

/// Open log streams (`/api/tasks/{id}/logs/stream`) one user may have at once.
pub const MAX_LOG_STREAMS: usize = 8;
/// Open live task feeds (`/api/events`, one a dashboard tab) one user may have at once.
pub const MAX_EVENT_STREAMS: usize = 16;

/// What a stream slot is for; each kind has its own bound per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Following a task's log.
    Logs,
    /// The live task feed.
    Events,
}

impl StreamKind {
    fn most(self) -> usize {
        match self {
            StreamKind::Logs => MAX_LOG_STREAMS,
            StreamKind::Events => MAX_EVENT_STREAMS,
        }
    }

    fn refusal(self) -> String {
        match self {
            StreamKind::Logs => format!(
                "you have {MAX_LOG_STREAMS} log streams open, the most one user may; close a log view (or a tab) and retry"
            ),
            StreamKind::Events => format!(
                "you have {MAX_EVENT_STREAMS} live feeds open (one a dashboard tab), the most one user may; close a tab and retry"
            ),
        }
    }
}

/// The bounds of one controller's API.
pub struct Guard {
    /// Password hashing, a few at a time.
    pub passwords: Passwords,
    /// Peers whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<IpAddr>,
    /// Open streams per user id and kind.
    streams: Mutex<HashMap<(i64, StreamKind), usize>>,
}

impl Guard {
    /// Bounds with `passwords`, believing `X-Forwarded-For` only from `trusted_proxies`.
    pub fn new(passwords: Passwords, trusted_proxies: Vec<IpAddr>) -> Self {
        Self {
            passwords,
            trusted_proxies,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one of `user`'s stream slots of `kind`, or says why not. The slot is given back
    /// when the returned value is dropped (the stream ended or the client went away).
    pub fn open_stream(
        self: &Arc<Self>,
        user: i64,
        kind: StreamKind,
    ) -> Result<StreamSlot, ApiError> {
        let mut open = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry((user, kind)).or_default();
        if *n >= kind.most() {
            return Err(ApiError::TooMany(kind.refusal()));
        }
        *n += 1;
        Ok(StreamSlot {
            guard: self.clone(),
            key: (user, kind),
        })
    }

    /// The address a request comes from: the peer, or when the peer is a trusted proxy the
    /// nearest address in `X-Forwarded-For` that is not one.
    fn client(&self, peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        let Some(list) = forwarded else { return peer };
        for hop in list.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                // A hop we cannot read: stop at the last address we could trust.
                return peer;
            };
            let ip = ip.to_canonical();
            if !self.trusted_proxies.contains(&ip) {
                return ip;
            }
        }
        peer
    }
}

/// One open stream of a user; gives the slot back when dropped.
pub struct StreamSlot {
    guard: Arc<Guard>,
    key: (i64, StreamKind),
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.guard.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The peer address of a connection, as the HTTP server records it for every request (plain
/// TCP or the TLS listener).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, super::tls::TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, super::tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// The client's address, as a login limit counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The limit key: the address (IPv6: its /64, what one host is usually given).
    pub fn key(&self) -> String {
        match self.0 {
            IpAddr::V4(v4) => format!("addr:{v4}"),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("addr:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        }
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(ConnectInfo(PeerAddr(peer))) =
            parts.extensions.get::<ConnectInfo<PeerAddr>>().copied()
        else {
            return Err(ApiError::Internal(
                "the HTTP server records no peer addresses (serve with connect info)".into(),
            ));
        };
        Ok(ClientAddr(state.guard.client(
            peer.ip(),
            forwarded_for(&parts.headers).as_deref(),
        )))
    }
}

/// Every `X-Forwarded-For` line of a request as one list, in the order received. A proxy may
/// append a line of its own instead of extending the client's: reading the first line alone would
/// take the client's word for its address. `None` when there is none, or a line is not text.
fn forwarded_for(headers: &axum::http::HeaderMap) -> Option<String> {
    let lines = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<_>>>()?;
    (!lines.is_empty()).then(|| lines.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_cannot_choose_its_address_in_a_line_of_its_own() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let g = Guard::new(Passwords::new(1, std::time::Duration::ZERO), vec![proxy]);
        // The client sends a line naming any address; the proxy adds a second line with the
        // address it saw. The proxy's line is the one that counts.
        let mut headers = axum::http::HeaderMap::new();
        headers.append("x-forwarded-for", "198.51.100.1".parse().unwrap());
        headers.append("x-forwarded-for", "203.0.113.9".parse().unwrap());
        let list = forwarded_for(&headers);
        assert_eq!(list.as_deref(), Some("198.51.100.1,203.0.113.9"));
        assert_eq!(
            g.client(proxy, list.as_deref()),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(forwarded_for(&axum::http::HeaderMap::new()), None);
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let g = Guard::new(Passwords::new(1, std::time::Duration::ZERO), vec![proxy]);
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        // A client that is no proxy cannot choose its address by header.
        assert_eq!(g.client(stranger, Some("198.51.100.1")), stranger);
        // Through the proxy: the nearest hop that is not a trusted proxy, not the leftmost one
        // (a client may send any X-Forwarded-For of its own, the proxy appends).
        assert_eq!(
            g.client(proxy, Some("1.2.3.4, 198.51.100.7, 10.0.0.1")),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(g.client(proxy, None), proxy);
        assert_eq!(g.client(proxy, Some("garbage")), proxy);
        let v6 = ClientAddr("2001:db8:1:2:3:4:5:6".parse().unwrap());
        assert_eq!(v6.key(), "addr:2001:db8:1:2::/64");
        let mapped = g.client("::ffff:203.0.113.9".parse().unwrap(), None);
        assert_eq!(ClientAddr(mapped).key(), "addr:203.0.113.9");
    }

    #[test]
    fn log_stream_slots_are_bounded_per_user_and_given_back() {
        let g = Arc::new(Guard::new(
            Passwords::new(1, std::time::Duration::ZERO),
            Vec::new(),
        ));
        let held: Vec<_> = (0..MAX_LOG_STREAMS)
            .map(|_| g.open_stream(1, StreamKind::Logs).unwrap())
            .collect();
        assert!(matches!(
            g.open_stream(1, StreamKind::Logs),
            Err(ApiError::TooMany(_))
        ));
        assert!(
            g.open_stream(2, StreamKind::Logs).is_ok(),
            "another user has slots of their own"
        );
        let feeds: Vec<_> = (0..MAX_EVENT_STREAMS)
            .map(|_| g.open_stream(1, StreamKind::Events).unwrap())
            .collect();
        assert!(
            matches!(
                g.open_stream(1, StreamKind::Events),
                Err(ApiError::TooMany(e)) if e.contains("live feeds")
            ),
            "live feeds are bounded apart from log streams"
        );
        drop(held);
        assert!(g.open_stream(1, StreamKind::Logs).is_ok());
        drop(feeds);
        assert!(g.open_stream(1, StreamKind::Events).is_ok());
    }
}
