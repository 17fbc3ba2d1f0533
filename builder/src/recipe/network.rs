//! `[network]`: the static address and the air-gap rules a recipe lists,
//! parsed into typed rules. The firewall stage turns them into nftables.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(&self) -> &'static str {
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
    /// The egress rules wider than the recipe's `wide_prefix` that the
    /// recipe accepted with `allow_wide = true` (each also in `egress`),
    /// so the manifest and `cairn inspect` can mark them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wide_egress: Vec<EgressRule>,
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
