//! Where B finds Service A: each `--service-a-url` parsed into a host, a port and a path
//! prefix, and how a host name becomes addresses. An IP literal is never resolved.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// One `--service-a-url`, parsed: where it points and the path prefix of `/echo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    port: u16,
    pub(crate) prefix: String,
}

impl Target {
    /// Parses `http://host[:port][/prefix]` (checked by [`crate::parse_service_a_url`]).
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        let host = uri
            .host()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        if uri.scheme_str() != Some("http") || host.is_empty() {
            return Err(format!("'{url}' must be http://HOST[:PORT]"));
        }
        Ok(Target {
            host,
            port: uri.port_u16().unwrap_or(80),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The length of the path prefix of `/echo` on this target.
    pub(crate) fn prefix_len(&self) -> usize {
        self.prefix.len()
    }

    /// The host as an IP literal, if it is one (then it is never resolved).
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The addresses this target means now: the IP itself, or every address of the name.
    pub(crate) fn resolve(&self, resolve: &Resolve) -> Result<Vec<SocketAddr>, String> {
        if let Some(ip) = self.ip() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let found = resolve(&self.host, self.port)
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        match found.is_empty() {
            true => Err(format!("{} resolves to no address", self.host)),
            false => Ok(found),
        }
    }
}

/// How a host name becomes addresses: [`system_resolver`] in the service; tests may give
/// names of their own to several loopback addresses.
pub type Resolve = Arc<dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The system's resolver (`/etc/hosts`, DNS), through the standard library.
pub fn system_resolver() -> Resolve {
    Arc::new(|host, port| Ok((host, port).to_socket_addrs()?.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_defaults() {
        let t = Target::parse("http://a.example/pre/").expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("a.example", 80, "/pre")
        );
        let t = Target::parse("http://[::1]:9").expect("url");
        assert_eq!((t.ip(), t.port), (Some("::1".parse().expect("ip")), 9));
    }
}
