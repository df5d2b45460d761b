//! Where the load goes: parsing `--url` and refusing any target that is not
//! this machine. A load generator pointed at someone else's server is an
//! attack, so every resolved address must be loopback (127.0.0.0/8 or ::1)
//! unless the operator says `--allow-remote`.

use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, bail, Context, Result};
use http::Uri;

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
pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid --url {url:?}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => bail!("--url scheme {other:?} is not supported (plain http only)"),
        None => bail!("--url {url:?} needs a scheme, e.g. http://127.0.0.1:8080"),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("--url {url:?} has no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        bail!("--url {url:?} has no host");
    }
    if uri.query().is_some() {
        bail!("--url must not carry a query string");
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
pub(crate) fn choose_addr(addrs: &[SocketAddr], allow_remote: bool) -> Result<SocketAddr> {
    let first = *addrs
        .first()
        .ok_or_else(|| anyhow!("--url host resolved to no address"))?;
    if !allow_remote {
        if let Some(remote) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            bail!(
                "refusing non-loopback target {remote}: only 127.0.0.0/8 and ::1 are allowed \
                 (pass --allow-remote to override)"
            );
        }
    }
    Ok(first)
}

/// Parses, resolves and validates `--url`.
pub(crate) async fn resolve(url: &str, allow_remote: bool) -> Result<Target> {
    let parsed = parse_url(url)?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((parsed.host.as_str(), parsed.port))
        .await
        .with_context(|| format!("cannot resolve {:?}", parsed.host))?
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
        assert!(parse_url("https://127.0.0.1").is_err());
        assert!(parse_url("127.0.0.1:8080").is_err());
        assert!(parse_url("http://127.0.0.1/?x=1").is_err());
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
        assert!(choose_addr(&[sa("10.1.2.3:1")], false).is_err());
        assert!(choose_addr(&[sa("127.0.0.1:1"), sa("8.8.8.8:1")], false).is_err());
        assert!(choose_addr(&[], false).is_err());
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
        assert!(resolve("http://10.9.8.7:8080", false).await.is_err());
    }
}
