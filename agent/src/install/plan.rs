//! The install plan: what the server (`GET /api/v1/install`, over mutual
//! TLS) or an operator (`levee-agent install --plan FILE`) asks the agent
//! to put on the disk. One definition, shared with the server: the wire
//! types of `levee_proto::enroll`. Artifact URLs may be `http://`,
//! `https://` or `file://`; the sha256 is lower-case hex, and the rootfs
//! size is the squashfs padded to 4 KiB (what stage 1 checks).

pub use levee_proto::enroll::{Artifact, InstallImage, InstallPlan};
