//! Where the load goes: parsing `--url` and refusing any target that is not
//! this machine. A load generator pointed at someone else's server is an
//! attack, so every resolved address must be loopback (127.0.0.0/8 or ::1)
//! unless the operator says `--allow-remote`.

use std::net::{IpAddr, SocketAddr};

use http::Uri;

use crate::error::LoadError;

/// The port used when `--url` names none.
const HTTP_PORT_DEFAULT: u16 = 80;

/// A resolved, validated target.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The socket every connection dials (resolved once, so DNS cannot move it).
    pub addr: SocketAddr,
    /// `host[:port]` for the Host header.
    pub authority: String,
    /// Path prefix from the URL without a trailing slash ("" for the root).
    pub base_path: String,
}

impl Target {
    /// The full request path for an API path such as `/items`.
    pub fn path(&self, api_path: &str) -> String {
        format!("{}{}", self.base_path, api_path)
    }
}

/// The parts of `--url` before name resolution.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    pub host: String,
    pub port: u16,
    pub authority: String,
    pub base_path: String,
}

/// Parses an `http://host[:port][/prefix]` URL. https is refused: the tool
/// speaks plain HTTP/1.1 only.
pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl, LoadError> {
    let uri: Uri = url.parse().map_err(|source| LoadError::UrlSyntax {
        url: url.to_string(),
        source,
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            let scheme = other.to_string();
            return Err(LoadError::UrlScheme { scheme });
        }
        None => return Err(LoadError::UrlNoScheme { url: url.into() }),
    }
    let no_host = || LoadError::UrlNoHost { url: url.into() };
    let authority = uri.authority().ok_or_else(no_host)?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(no_host());
    }
    if uri.query().is_some() {
        return Err(LoadError::UrlQuery);
    }
    Ok(ParsedUrl {
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(HTTP_PORT_DEFAULT),
        authority: authority.as_str().to_string(),
        base_path: uri.path().trim_end_matches('/').to_string(),
    })
}

/// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.x.y.z).
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Picks the address to dial; all of them must be loopback unless allowed.
/// Requiring *all* keeps a name with one loopback and one remote record out.
pub(crate) fn choose_addr(
    addrs: &[SocketAddr],
    allow_remote: bool,
) -> Result<SocketAddr, LoadError> {
    let first = *addrs.first().ok_or(LoadError::NoAddress)?;
    if !allow_remote {
        if let Some(&addr) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            return Err(LoadError::NotLoopback { addr });
        }
    }
    Ok(first)
}

/// Parses, resolves and validates `--url`.
pub(crate) async fn resolve(url: &str, allow_remote: bool) -> Result<Target, LoadError> {
    let parsed = parse_url(url)?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((parsed.host.as_str(), parsed.port))
        .await
        .map_err(|source| LoadError::Resolve {
            host: parsed.host.clone(),
            source,
        })?
        .collect();
    let addr = choose_addr(&addrs, allow_remote)?;
    Ok(Target {
        addr,
        authority: parsed.authority,
        base_path: parsed.base_path,
    })
}

#[cfg(test)]
mod tests {
    //! Goal: only loopback targets pass; method: pure parsing and address
    //! checks, plus resolution of names that need no DNS server.
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn parses_default_url() {
        let p = parse_url("http://127.0.0.1:8080").expect("parse");
        assert_eq!(p.host, "127.0.0.1");
        assert_eq!(p.port, 8080);
        assert_eq!(p.authority, "127.0.0.1:8080");
        assert_eq!(p.base_path, "");
    }

    #[test]
    fn parses_ipv6_and_prefix() {
        let p = parse_url("http://[::1]:9000/api/").expect("parse");
        assert_eq!(p.host, "::1");
        assert_eq!(p.base_path, "/api");
        assert_eq!(parse_url("http://localhost").expect("parse").port, 80);
    }

    #[test]
    fn refuses_bad_schemes() {
        assert!(matches!(
            parse_url("https://127.0.0.1"),
            Err(LoadError::UrlScheme { scheme }) if scheme == "https"
        ));
        assert!(matches!(
            parse_url("127.0.0.1:8080"),
            Err(LoadError::UrlNoScheme { .. })
        ));
        assert!(matches!(
            parse_url("http://127.0.0.1/?x=1"),
            Err(LoadError::UrlQuery)
        ));
        assert!(matches!(
            parse_url("http://a b"),
            Err(LoadError::UrlSyntax { .. })
        ));
    }

    #[test]
    fn loopback_ranges() {
        assert!(is_loopback("127.0.0.1".parse().expect("ip")));
        assert!(is_loopback("127.255.3.4".parse().expect("ip")));
        assert!(is_loopback("::1".parse().expect("ip")));
        assert!(is_loopback("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!is_loopback("10.0.0.1".parse().expect("ip")));
        assert!(!is_loopback("192.168.1.1".parse().expect("ip")));
        assert!(!is_loopback("0.0.0.0".parse().expect("ip")));
        assert!(!is_loopback("::".parse().expect("ip")));
    }

    #[test]
    fn choose_addr_requires_every_address_loopback() {
        assert!(choose_addr(&[sa("127.0.0.1:1")], false).is_ok());
        assert!(matches!(
            choose_addr(&[sa("10.1.2.3:1")], false),
            Err(LoadError::NotLoopback { addr }) if addr == sa("10.1.2.3:1")
        ));
        assert!(matches!(
            choose_addr(&[sa("127.0.0.1:1"), sa("8.8.8.8:1")], false),
            Err(LoadError::NotLoopback { addr }) if addr == sa("8.8.8.8:1")
        ));
        assert!(matches!(choose_addr(&[], false), Err(LoadError::NoAddress)));
        assert_eq!(
            choose_addr(&[sa("10.1.2.3:1")], true).expect("allowed"),
            sa("10.1.2.3:1")
        );
    }

    #[tokio::test]
    async fn resolves_localhost_and_refuses_literal_remote() {
        let t = resolve("http://localhost:8080", false)
            .await
            .expect("localhost");
        assert!(is_loopback(t.addr.ip()));
        assert!(matches!(
            resolve("http://10.9.8.7:8080", false).await,
            Err(LoadError::NotLoopback { .. })
        ));
    }
}
