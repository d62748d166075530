//! The `source` and `destination` label values: a configured source name or the address
//! (IPv6 by /64), and a watched destination or `other`.

use std::net::IpAddr;

use crate::config::Config;
use crate::names::HostName;

use super::guard::OTHER;

/// A connection's `source` label value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLabel {
    pub value: String,
    /// A per-address value (foldable by the cardinality guard), not a configured name.
    pub is_ip: bool,
}

/// The `[[sources]]` name of `ip`, else the address (IPv6 grouped by /64, written as
/// `2001:db8:1:2::/64`; IPv4-mapped IPv6 unmapped first).
pub fn source_label(cfg: &Config, ip: IpAddr) -> SourceLabel {
    if let Some(name) = cfg.sources.name_for(ip) {
        return SourceLabel {
            value: name.to_string(),
            is_ip: false,
        };
    }
    let value = match ip.to_canonical() {
        IpAddr::V4(v4) => crate::net::addr_text::ipv4_string(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
    };
    SourceLabel { value, is_ip: true }
}

/// The connection's name when it is watched (or when every destination is tracked), else
/// `other`.
pub fn destination_label(cfg: &Config, name: Option<&HostName>) -> String {
    match name {
        Some(n) if cfg.metrics.track_all_destinations || cfg.is_watched(n) => n.to_string(),
        _ => OTHER.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_destinations() {
        let cfg =
            Config::from_toml_str("[[sources]]\ncidr = \"10.1.2.0/24\"\nname = \"build-agents\"\n")
                .unwrap();
        let l = source_label(&cfg, "10.1.2.9".parse().unwrap());
        assert_eq!((l.value.as_str(), l.is_ip), ("build-agents", false));
        assert_eq!(
            source_label(&cfg, "::ffff:10.3.2.1".parse().unwrap()).value,
            "10.3.2.1"
        );
        assert_eq!(
            source_label(&cfg, "2001:db8:1:2:3:4:5:6".parse().unwrap()).value,
            "2001:db8:1:2::/64"
        );
        let login = HostName::parse("LOGIN.microsoftonline.com.").unwrap();
        assert_eq!(
            destination_label(&cfg, Some(&login)),
            "login.microsoftonline.com"
        );
        let sub = HostName::parse("x.login.microsoftonline.com").unwrap();
        assert_eq!(
            destination_label(&cfg, Some(&sub)),
            "x.login.microsoftonline.com"
        );
        let other = HostName::parse("example.com").unwrap();
        assert_eq!(destination_label(&cfg, Some(&other)), "other");
        assert_eq!(destination_label(&cfg, None), "other");
    }
}
