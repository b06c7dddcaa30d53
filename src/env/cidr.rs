//! IPv4 CIDR blocks, as AWS accepts them for VPCs, subnets and rules.

use serde::{Serialize, Serializer};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn first(&self) -> u32 {
        u32::from(self.addr) & self.mask()
    }

    pub fn last(&self) -> u32 {
        self.first() | !self.mask()
    }

    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && other.first() >= self.first() && other.last() <= self.last()
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| "missing the /prefix length".to_string())?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix length {prefix:?} must be 0 to 32"))?;
        let cidr = Cidr { addr, prefix };
        if u32::from(addr) != cidr.first() {
            return Err(format!(
                "host bits are set; the network address is {}/{prefix}",
                Ipv4Addr::from(cidr.first())
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contain() {
        let vpc: Cidr = "10.40.0.0/16".parse().unwrap();
        let sub: Cidr = "10.40.1.0/24".parse().unwrap();
        let other: Cidr = "10.41.1.0/24".parse().unwrap();
        assert!(vpc.contains(&sub));
        assert!(!vpc.contains(&other));
        assert!(vpc.overlaps(&sub));
        assert!(!sub.overlaps(&other));
        assert!("10.40.1.1/24"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("10.40.1.0/24"));
        assert!("10.40.1.0/33".parse::<Cidr>().is_err());
        assert!("10.40.1.0".parse::<Cidr>().is_err());
        assert!("300.1.1.0/24".parse::<Cidr>().is_err());
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
    }
}
