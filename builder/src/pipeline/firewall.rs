//! Air-gap: the recipe's `[network]` rules become an nftables ruleset that
//! drops everything not listed (loopback and replies to allowed traffic
//! excepted), and a systemd-networkd file for a static address. The ruleset
//! lives in the verity-protected root and is loaded before any interface
//! is up. Invariant: an empty policy allows no packet in or out.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn as_str(&self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRule {
    pub net: Ipv4Addr,
    pub prefix: u8,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRule {
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    pub egress: Vec<EgressRule>,
    pub ingress: Vec<IngressRule>,
    /// Static address and prefix length of the wired interfaces.
    pub address: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
}

fn parse_proto(s: Option<&str>) -> Result<Proto, String> {
    match s {
        None | Some("tcp") => Ok(Proto::Tcp),
        Some("udp") => Ok(Proto::Udp),
        Some(p) => Err(format!("protocol {p:?} is not tcp or udp")),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {s:?} is not a number from 1 to 65535")),
    }
}

/// "10.0.0.0/8:443", "10.0.2.100:8080/udp" (a bare address means /32).
pub fn parse_egress(s: &str) -> Result<EgressRule, String> {
    let help = "write egress rules as \"CIDR:PORT\" or \"CIDR:PORT/udp\", e.g. \"10.0.0.5/32:443\"";
    let (body, proto) = match s.split_once('/') {
        Some((a, rest)) if rest.contains(':') => {
            // the slash belongs to the CIDR: "a/n:port[/proto]"
            let (pfx_port, proto) = match rest.split_once('/') {
                Some((pp, pr)) => (pp, Some(pr)),
                None => (rest, None),
            };
            (format!("{a}/{pfx_port}"), proto)
        }
        Some((a, pr)) => (a.to_string(), Some(pr)),
        None => (s.to_string(), None),
    };
    let proto = parse_proto(proto).map_err(|e| format!("{e}; {help}"))?;
    let (cidr, port) = body
        .rsplit_once(':')
        .ok_or_else(|| format!("egress rule {s:?} has no port; {help}"))?;
    let port = parse_port(port).map_err(|e| format!("{e}; {help}"))?;
    let (net, prefix) = match cidr.split_once('/') {
        Some((a, p)) => (
            a,
            p.parse::<u8>()
                .map_err(|_| format!("bad prefix in {s:?}; {help}"))?,
        ),
        None => (cidr, 32),
    };
    let net: Ipv4Addr = net
        .parse()
        .map_err(|_| format!("{net:?} is not an IPv4 address; {help}"))?;
    if prefix > 32 {
        return Err(format!("prefix /{prefix} is longer than 32; {help}"));
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    if u32::from(net) & !mask != 0 {
        return Err(format!(
            "{net}/{prefix} has host bits set; write {}/{prefix}",
            Ipv4Addr::from(u32::from(net) & mask)
        ));
    }
    Ok(EgressRule {
        net,
        prefix,
        port,
        proto,
    })
}

/// "9000/tcp", "53/udp" or "9000".
pub fn parse_ingress(s: &str) -> Result<IngressRule, String> {
    let (port, proto) = match s.split_once('/') {
        Some((p, pr)) => (p, Some(pr)),
        None => (s, None),
    };
    let help = "write ingress rules as \"PORT/tcp\" or \"PORT/udp\"";
    Ok(IngressRule {
        port: parse_port(port).map_err(|e| format!("{e}; {help}"))?,
        proto: parse_proto(proto).map_err(|e| format!("{e}; {help}"))?,
    })
}

/// "10.0.2.15/24".
pub fn parse_address(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let help = "write the address as \"A.B.C.D/PREFIX\", e.g. \"10.0.2.15/24\"";
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} has no /PREFIX; {help}"))?;
    let a: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{a:?} is not an IPv4 address; {help}"))?;
    let p: u8 = p
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("prefix {p:?} is not 1-32; {help}"))?;
    Ok((a, p))
}

/// The nftables ruleset for a policy.
/// Pod and service networks of k3s (its defaults): cluster-internal
/// traffic, allowed when k3s is the runtime; egress rules still bind pods
/// for everything else, and NetworkPolicies apply inside.
pub const K3S_CLUSTER_NETS: &[&str] = &["10.42.0.0/16", "10.43.0.0/16"];

pub fn ruleset(p: &NetworkPolicy, runtime: crate::pipeline::workloads::Runtime) -> String {
    let k3s = runtime == crate::pipeline::workloads::Runtime::K3s;
    let mut s = String::new();
    s.push_str("#!/usr/sbin/nft -f\n# Generated by cairn from the recipe's [network] rules. Default: nothing in, nothing out.\nflush ruleset\n\ntable inet cairn {\n");
    s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tiif \"lo\" accept\n\t\tct state established,related accept\n\t\tct state invalid drop\n");
    if k3s {
        s.push_str("\t\t# k3s: pods reach the node (API server, DNS) over the cluster interfaces\n\t\tiifname { \"cni0\", \"flannel.1\" } accept\n");
    }
    for r in &p.ingress {
        let _ = writeln!(s, "\t\t{} dport {} accept", r.proto.as_str(), r.port);
    }
    s.push_str("\t}\n\n");
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n");
    if k3s {
        let nets = K3S_CLUSTER_NETS.join(", ");
        s.push_str("\t\tct state established,related accept\n");
        let _ = writeln!(
            s,
            "\t\t# k3s: pod-to-pod and pod-to-service traffic stays inside the node\n\t\tip saddr {{ {nets} }} ip daddr {{ {nets} }} accept"
        );
        for r in &p.egress {
            let _ = writeln!(
                s,
                "\t\tip saddr {{ {nets} }} ip daddr {}/{} {} dport {} accept",
                r.net,
                r.prefix,
                r.proto.as_str(),
                r.port
            );
        }
    }
    s.push_str("\t}\n\n");
    s.push_str("\tchain output {\n\t\ttype filter hook output priority filter; policy drop;\n\t\toif \"lo\" accept\n\t\tct state established,related accept\n");
    if k3s {
        let _ = writeln!(
            s,
            "\t\tip daddr {{ {} }} accept\n\t\toifname {{ \"cni0\", \"flannel.1\" }} accept",
            K3S_CLUSTER_NETS.join(", ")
        );
    }
    for r in &p.egress {
        let _ = writeln!(
            s,
            "\t\tip daddr {}/{} {} dport {} accept",
            r.net,
            r.prefix,
            r.proto.as_str(),
            r.port
        );
    }
    s.push_str("\t\t# fail fast and visibly instead of hanging\n\t\tlog prefix \"cairn-egress-denied: \" limit rate 5/minute\n\t\treject with icmpx type admin-prohibited\n\t}\n}\n");
    s
}

/// The systemd-networkd file, when the recipe gives an address.
pub fn networkd_file(p: &NetworkPolicy) -> Option<String> {
    let (addr, prefix) = p.address?;
    let mut s = format!(
        "# Generated by cairn: static address, no DHCP, no IPv6 autoconfiguration.\n[Match]\nType=ether\n\n[Network]\nAddress={addr}/{prefix}\nDHCP=no\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nLLMNR=no\nMulticastDNS=no\n"
    );
    if let Some(g) = p.gateway {
        let _ = writeln!(s, "Gateway={g}");
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_and_refuses_junk() {
        assert_eq!(
            parse_egress("10.0.2.100:8080").unwrap(),
            EgressRule {
                net: Ipv4Addr::new(10, 0, 2, 100),
                prefix: 32,
                port: 8080,
                proto: Proto::Tcp
            }
        );
        assert_eq!(parse_egress("10.0.0.0/8:53/udp").unwrap().proto, Proto::Udp);
        assert_eq!(parse_egress("10.0.0.0/8:53/udp").unwrap().prefix, 8);
        assert!(parse_egress("10.0.0.1/8:53")
            .unwrap_err()
            .contains("host bits"));
        assert!(parse_egress("example.com:443").is_err());
        assert!(parse_egress("10.0.0.1").is_err());
        assert!(parse_egress("10.0.0.1:0").is_err());
        assert!(parse_egress("10.0.0.1:80/icmp").is_err());
        assert_eq!(parse_ingress("9000/tcp").unwrap().port, 9000);
        assert!(parse_ingress("99999/tcp").is_err());
        assert_eq!(parse_address("10.0.2.15/24").unwrap().1, 24);
        assert!(parse_address("10.0.2.15").is_err());
    }

    #[test]
    fn default_policy_allows_nothing_golden() {
        let got = ruleset(&NetworkPolicy::default(), crate::pipeline::workloads::Runtime::None);
        let want = include_str!("../../tests/golden/firewall-default.nft");
        assert_eq!(got, want);
        assert!(!got.contains("dport"));
        assert_eq!(networkd_file(&NetworkPolicy::default()), None);
    }

    #[test]
    fn listed_rules_are_the_only_openings_golden() {
        let p = NetworkPolicy {
            egress: vec![parse_egress("10.0.2.100/32:8080").unwrap()],
            ingress: vec![parse_ingress("9000/tcp").unwrap()],
            address: Some(parse_address("10.0.2.15/24").unwrap()),
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
        };
        crate::assert_golden(
            "firewall-rules.nft",
            &ruleset(&p, crate::pipeline::workloads::Runtime::None),
        );
        crate::assert_golden("cairn.network", &networkd_file(&p).unwrap_or_default());
        // With k3s, the cluster networks are handled and the rules still hold.
        let k = ruleset(&p, crate::pipeline::workloads::Runtime::K3s);
        crate::assert_golden("firewall-k3s.nft", &k);
        assert!(k.contains("ip daddr 10.0.2.100/32 tcp dport 8080 accept"));
    }
}
