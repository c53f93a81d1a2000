//! IPv6 router advertisements (being written).
