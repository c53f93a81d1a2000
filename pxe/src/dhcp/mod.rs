//! DHCPv4 and proxyDHCP (being written).
