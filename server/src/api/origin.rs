//! Where a request comes from: the client's address and User-Agent.
//!
//! The address is the TCP peer's, unless that peer is a configured trusted
//! proxy; then X-Forwarded-For is read from the right, skipping trusted
//! proxies, and the first other address is the client. A client cannot spoof
//! its address by sending the header itself, because only the entries added
//! by trusted proxies are believed.
//!
//! The header may arrive as several lines: a client sends its own and a proxy
//! appends another rather than extending it. RFC 9110 §5.3 makes those lines
//! one list, in order, so every line is read; reading only the first would
//! let the client's line stand for the proxy's.

use std::future::{Ready, ready};
use std::net::IpAddr;

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};

use super::AppState;
use crate::auth::ClientContext;

/// The extractor of a request's origin (not a client of ours): wraps the
/// service's [`ClientContext`].
#[derive(Debug, Clone)]
pub struct RequestOrigin(pub ClientContext);

/// Resolves the client address from the peer and the forwarding header,
/// given as its lines in the order they arrived.
pub fn resolve_client_ip(
    peer: Option<IpAddr>,
    forwarded_for: &[&str],
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    // The lines are one comma-separated list: the last entry of the last
    // line is the newest hop.
    let hops = forwarded_for.iter().rev().flat_map(|line| line.rsplit(','));
    let mut last_trusted = peer;
    for hop in hops {
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

impl FromRequest for RequestOrigin {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let trusted = req
            .app_data::<web::Data<AppState>>()
            .map(|s| s.trusted_proxies.as_slice())
            .unwrap_or_default();
        // A line that is not visible ASCII holds no address we could believe;
        // it stays in its place as an entry that does not parse, so that the
        // chain is believed only up to it.
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        let ip = resolve_client_ip(req.peer_addr().map(|a| a.ip()), &forwarded, trusted);
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(200).collect());
        ready(Ok(RequestOrigin(ClientContext { ip, user_agent })))
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
            &["198.51.100.1"],
            &[ip("10.0.0.1")],
        );
        assert_eq!(got, Some(ip("203.0.113.9")));
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        let got = resolve_client_ip(
            Some(ip("10.0.0.1")),
            &["6.6.6.6, 198.51.100.7, 10.0.0.2"],
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
        let got = resolve_client_ip(Some(ip("10.0.0.1")), &["nonsense"], &[ip("10.0.0.1")]);
        assert_eq!(got, Some(ip("10.0.0.1")));
    }

    #[test]
    fn without_the_header_a_trusted_peer_is_the_client() {
        let got = resolve_client_ip(Some(ip("10.0.0.1")), &[], &[ip("10.0.0.1")]);
        assert_eq!(got, Some(ip("10.0.0.1")));
    }

    #[test]
    fn several_header_lines_are_one_list_read_from_the_last_line() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        // The client sent its own line; the proxy appended one of its own.
        let got = resolve_client_ip(Some(ip("10.0.0.1")), &["6.6.6.6", "198.51.100.7"], &trusted);
        assert_eq!(got, Some(ip("198.51.100.7")), "the client's line won");
        // Trusted hops on the last line are skipped into the earlier ones.
        let got = resolve_client_ip(
            Some(ip("10.0.0.1")),
            &["6.6.6.6, 198.51.100.8", "10.0.0.2"],
            &trusted,
        );
        assert_eq!(got, Some(ip("198.51.100.8")));
    }

    #[test]
    fn an_unreadable_line_ends_the_chain_at_its_place() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        let got = resolve_client_ip(Some(ip("10.0.0.1")), &["6.6.6.6", "", "10.0.0.2"], &trusted);
        assert_eq!(got, Some(ip("10.0.0.2")));
        let got = resolve_client_ip(Some(ip("10.0.0.1")), &["", "198.51.100.9"], &trusted);
        assert_eq!(got, Some(ip("198.51.100.9")));
    }
}
