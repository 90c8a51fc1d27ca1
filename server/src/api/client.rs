//! Who is asking: the client's address and User-Agent.
//!
//! The address is the TCP peer's, unless that peer is a configured trusted
//! proxy; then X-Forwarded-For is read from the right, skipping trusted
//! proxies, and the first other address is the client. A client cannot spoof
//! its address by sending the header itself, because only the entries added
//! by trusted proxies are believed.

use std::future::{Ready, ready};
use std::net::IpAddr;

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};

use super::AppState;
use crate::auth::ClientContext;

/// The extractor: wraps the service's [`ClientContext`].
#[derive(Debug, Clone)]
pub struct Client(pub ClientContext);

/// Resolves the client address from the peer and the forwarding header.
pub fn resolve_client_ip(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let Some(chain) = forwarded_for else {
        return Some(peer);
    };
    let mut last_trusted = peer;
    for hop in chain.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => last_trusted = ip,
            Ok(ip) => return Some(ip),
            // A garbled entry ends the chain we can believe; the last trusted
            // hop is then the best we know.
            Err(_) => return Some(last_trusted),
        }
    }
    Some(last_trusted)
}

impl FromRequest for Client {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let trusted = req
            .app_data::<web::Data<AppState>>()
            .map(|s| s.trusted_proxies.as_slice())
            .unwrap_or_default();
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let ip = resolve_client_ip(req.peer_addr().map(|a| a.ip()), forwarded, trusted);
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(200).collect());
        ready(Ok(Client(ClientContext { ip, user_agent })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_is_ignored_from_untrusted_peers() {
        let got = resolve_client_ip(
            Some(ip("203.0.113.9")),
            Some("198.51.100.1"),
            &[ip("10.0.0.1")],
        );
        assert_eq!(got, Some(ip("203.0.113.9")));
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        let got = resolve_client_ip(
            Some(ip("10.0.0.1")),
            Some("6.6.6.6, 198.51.100.7, 10.0.0.2"),
            &trusted,
        );
        assert_eq!(
            got,
            Some(ip("198.51.100.7")),
            "the spoofed left-most entry must not win"
        );
    }

    #[test]
    fn a_garbled_header_falls_back_to_the_last_trusted_hop() {
        let got = resolve_client_ip(Some(ip("10.0.0.1")), Some("nonsense"), &[ip("10.0.0.1")]);
        assert_eq!(got, Some(ip("10.0.0.1")));
    }
}
