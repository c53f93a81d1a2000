//! End-to-end tests: real QEMU machines booting over Levee's own servers in
//! private network namespaces. One test binary; modules by subject.

mod fleet;
mod install;
mod offsite;
mod pxe_boot;
mod update;
