//! Arbitrary bytes into the pure DHCP handler, in both modes and on both
//! ports: it must never panic, and every reply it makes must decode.
#![no_main]

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use levee_pxe::boot::{BootDecision, BootRequest};
use levee_pxe::dhcp::{
    parse_reply, DhcpMode, Handler, HandlerConfig, IpxeBinaries, MemoryLeases, Port,
};
use libfuzzer_sys::fuzz_target;

fn handler(mode: DhcpMode) -> Handler {
    let config = HandlerConfig {
        mode,
        server_ip: Ipv4Addr::new(10, 99, 0, 1),
        prefix_len: 24,
        range: Some((Ipv4Addr::new(10, 99, 0, 100), Ipv4Addr::new(10, 99, 0, 103))),
        lease_time: Duration::from_secs(60),
        ipxe: IpxeBinaries::with_files(Path::new("/usr/lib/ipxe"), |f| f != "ipxe.efi"),
        http_base: "http://10.99.0.1:8080".into(),
    };
    // Refuse one MAC so the Ignore path is fuzzed too.
    let policy = Arc::new(|req: &BootRequest| {
        if req.mac.0[5] == 0xff {
            BootDecision::Ignore {
                reason: "fuzz".into(),
            }
        } else {
            BootDecision::Boot {
                script_url: format!("http://10.99.0.1:8080/boot/{}.ipxe", req.mac),
            }
        }
    });
    match Handler::new(config, policy, Arc::new(MemoryLeases::new())) {
        Ok(h) => h,
        Err(err) => panic!("fuzz handler config rejected: {err}"),
    }
}

fuzz_target!(|data: &[u8]| {
    for mode in [DhcpMode::Full, DhcpMode::Proxy] {
        // A fresh handler per input keeps crashes reproducible; feeding the
        // input twice exercises the lease state it created.
        let mut h = handler(mode);
        for now in [1_000, 1_030] {
            for port in [Port::Dhcp, Port::Proxy] {
                if let Some(reply) = h.handle(data, port, now) {
                    assert!(parse_reply(&reply.bytes).is_some(), "reply does not decode");
                }
            }
        }
    }
});
