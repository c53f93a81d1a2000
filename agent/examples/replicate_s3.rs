//! One replication of a repository to a direct S3 target, as the
//! appliance runs it (bench/offsite.sh). Prints the outcome as JSON.
//!
//! Environment: LEVEE_REPO, LEVEE_PASSWORD, LEVEE_STATE_DIR (upload ids),
//! S3_URL (s3://bucket/prefix), S3_ENDPOINT, S3_REGION, S3_ACCESS_KEY_ID,
//! S3_SECRET_ACCESS_KEY; optional LEVEE_CUSTOMER (default `bench`),
//! LEVEE_STREAMS (the target's `streams`), LEVEE_WHOLE_BYTES (files up to
//! this size in one request, `ReplicateOptions::whole_bytes`) and
//! LEVEE_BANDWIDTH_LIMIT (`bandwidth_limit`, e.g. `100Mbit/s`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use levee_agent::enroll::{Credential, ServerInfo};
use levee_agent::replicate::{self, Bucket, ReplicateOptions};
use levee_agent::Repository;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("${name} is not set"))
}

fn main() -> anyhow::Result<()> {
    let repo = Repository::open(
        &PathBuf::from(env("LEVEE_REPO")?),
        env("LEVEE_PASSWORD")?.as_bytes(),
    )?;
    let mut target = serde_json::json!({
        "name": "bench-s3",
        "url": env("S3_URL")?,
        "endpoint": env("S3_ENDPOINT")?,
        "region": env("S3_REGION")?,
        "access_key_id": env("S3_ACCESS_KEY_ID")?,
        "secret_access_key": env("S3_SECRET_ACCESS_KEY")?,
    });
    if let Ok(n) = std::env::var("LEVEE_STREAMS") {
        let n: u32 = n
            .parse()
            .with_context(|| format!("$LEVEE_STREAMS: {n:?} is not a number"))?;
        target["streams"] = n.into();
    }
    let target = serde_json::from_value(target)?;
    // A direct S3 target has no use for the appliance's certificate.
    let cred = Credential {
        key_pem: String::new(),
        cert_pem: String::new(),
        ca_pem: String::new(),
        server: ServerInfo {
            http_url: String::new(),
            https_url: String::new(),
            appliance_id: 0,
        },
    };
    let customer = std::env::var("LEVEE_CUSTOMER").unwrap_or_else(|_| "bench".into());
    let mut opts = ReplicateOptions {
        verify_share: 0.0,
        ..ReplicateOptions::default()
    };
    if let Ok(n) = std::env::var("LEVEE_WHOLE_BYTES") {
        opts.whole_bytes = n
            .parse()
            .with_context(|| format!("$LEVEE_WHOLE_BYTES: {n:?} is not a number"))?;
    }
    let rate = match std::env::var("LEVEE_BANDWIDTH_LIMIT") {
        Ok(r) => Some(
            levee_proto::config::parse_rate(&r)
                .with_context(|| format!("$LEVEE_BANDWIDTH_LIMIT: {r:?} is not a rate"))?,
        ),
        Err(_) => None,
    };
    let out = replicate::replicate_target(
        &repo,
        &customer,
        &target,
        &cred,
        Arc::new(Bucket::new(rate)),
        &opts,
        &PathBuf::from(env("LEVEE_STATE_DIR")?),
    );
    println!(
        "{}",
        serde_json::json!({
            "files_uploaded": out.files_uploaded,
            "bytes_uploaded": out.bytes_uploaded,
            "files_present": out.files_present,
            "bytes_present": out.bytes_present,
            "errors": out.errors,
            "warnings": out.warnings,
        })
    );
    anyhow::ensure!(out.ok(), "replication failed: {:?}", out.errors);
    Ok(())
}
