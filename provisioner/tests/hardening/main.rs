//! Issue 11's attacks on `levee serve` and the agent, each against a real
//! server on 127.0.0.1: slow and greedy clients on both listeners
//! ([`listen`]), and what the agent trusts from the network ([`trust`]).
//! One test binary: every binary links every dependency.

#[path = "../common/mod.rs"]
mod common;
mod listen;
mod trust;
