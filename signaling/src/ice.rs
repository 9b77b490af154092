//! The ICE servers calls are handed (`GET /v1/calls/ice-servers`): STUN and
//! TURN URLs, with time-limited TURN credentials signed by
//! [`courier_turn::TurnSecrets`] for whichever relay runs (the embedded one
//! or coturn).

use std::time::Duration;

use courier_turn::{TURN_CREDENTIAL_TTL_S_DEFAULT, TurnSecrets};

/// What `GET /v1/calls/ice-servers` hands out.
#[derive(Debug, Clone)]
pub struct IceServers {
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    /// Signs the TURN credentials; `None` when no TURN relay is configured.
    pub secrets: Option<TurnSecrets>,
    pub credential_ttl: Duration,
}

impl Default for IceServers {
    fn default() -> Self {
        IceServers {
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            secrets: None,
            credential_ttl: Duration::from_secs(TURN_CREDENTIAL_TTL_S_DEFAULT),
        }
    }
}

impl IceServers {
    /// The URLs of a relay listening on `addr` (UDP and TCP), which also
    /// answers STUN Binding requests.
    pub fn embedded(addr: std::net::SocketAddr, secrets: TurnSecrets, credential_ttl: Duration) -> Self {
        IceServers {
            stun_urls: vec![format!("stun:{addr}")],
            turn_urls: vec![format!("turn:{addr}?transport=udp"), format!("turn:{addr}?transport=tcp")],
            secrets: Some(secrets),
            credential_ttl,
        }
    }
}

/// Checks a STUN or TURN URL (RFC 7064, RFC 7065): scheme, a host, an
/// optional port and, for TURN, an optional transport.
pub fn check_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once(':').ok_or_else(|| format!("{url:?} is not a stun:/turn: URL"))?;
    let (host_port, query) = match rest.split_once('?') {
        Some((host_port, query)) => (host_port, Some(query)),
        None => (rest, None),
    };
    let turn = match scheme {
        "stun" | "stuns" => false,
        "turn" | "turns" => true,
        _ => return Err(format!("{url:?}: the scheme must be stun, stuns, turn or turns")),
    };
    if host_port.is_empty() || host_port.starts_with('/') || host_port.contains(char::is_whitespace) {
        return Err(format!("{url:?}: a host is needed after the scheme (turn:host:port)"));
    }
    match query {
        None => Ok(()),
        Some("transport=udp" | "transport=tcp") if turn => Ok(()),
        Some(_) => Err(format!("{url:?}: only turn: URLs take ?transport=udp or ?transport=tcp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for good in ["stun:127.0.0.1:3478", "turn:turn.example.com?transport=tcp", "turns:[::1]:5349", "stun:host"] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for bad in ["http://x", "turn:", "turn://host", "stun:host?transport=udp", "turn:host?transport=sctp", "host"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
