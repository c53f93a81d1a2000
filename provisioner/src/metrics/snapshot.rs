//! The store's state as gauges, computed at scrape time: a fresh recorder
//! per computation, so an appliance that is gone leaves no stale series
//! behind (a process-wide gauge would keep its last value forever).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::store::{ApplianceState, Store, StoreError};

/// How long one computation serves scrapes: several Prometheus servers
/// (or a fast scrape interval) cost the store one read per this period.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

const STATES: [ApplianceState; 6] = [
    ApplianceState::Pending,
    ApplianceState::Enrolled,
    ApplianceState::Installing,
    ApplianceState::Installed,
    ApplianceState::Failed,
    ApplianceState::Retired,
];

/// Renders the store's gauges, cached for [`CACHE_FOR`].
pub struct Snapshot {
    store: Arc<dyn Store>,
    data_dir: PathBuf,
    cache: Mutex<Option<(Instant, String)>>,
    /// Image and offsite store sizes: walking a large offsite store costs
    /// more than the rest together, and it grows slowly.
    sizes: Mutex<Option<(Instant, u64, u64)>>,
}

/// How long directory sizes are reused.
const SIZES_FOR: Duration = Duration::from_secs(300);

impl Snapshot {
    pub fn new(store: Arc<dyn Store>, data_dir: PathBuf) -> Snapshot {
        Snapshot {
            store,
            data_dir,
            cache: Mutex::new(None),
            sizes: Mutex::new(None),
        }
    }

    /// The gauges in Prometheus text format (blocking: store reads).
    pub fn render(&self) -> Result<String, StoreError> {
        // Held while computing: concurrent scrapes wait for one read.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, text)) = cache.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return Ok(text.clone());
            }
        }
        let text = self.compute()?;
        *cache = Some((Instant::now(), text.clone()));
        Ok(text)
    }

    fn compute(&self) -> Result<String, StoreError> {
        let now = crate::store::now();
        let appliances = self.store.appliances()?;
        let facts = self.store.backup_facts(None)?;
        let database = self.store.database_bytes()?;
        let (images, offsite) = self.dir_sizes();

        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let mut by_state: HashMap<&'static str, u64> =
                STATES.iter().map(|s| (s.as_str(), 0)).collect();
            for a in &appliances {
                *by_state.entry(a.state.as_str()).or_default() += 1;
            }
            for (state, n) in by_state {
                gauge!("levee_appliances", "state" => state).set(n as f64);
            }
            for a in appliances
                .iter()
                .filter(|a| a.state != ApplianceState::Retired)
            {
                let labels = [
                    ("appliance", a.id.to_string()),
                    ("customer", a.customer.clone().unwrap_or_default()),
                ];
                if let Some(t) = a.last_heartbeat.max(a.last_report_at) {
                    gauge!("levee_appliance_heartbeat_age_seconds", &labels)
                        .set(now.saturating_sub(t) as f64);
                }
                let Some(f) = facts.get(&a.id) else { continue };
                if let Some(t) = f.last_success_at {
                    let age = (now as i64).saturating_sub(t).max(0);
                    gauge!("levee_appliance_backup_age_seconds", &labels).set(age as f64);
                }
                let failing = f.failing.iter().map(|s| s.count).max().unwrap_or(0);
                gauge!("levee_appliance_backup_failures_in_row", &labels).set(failing as f64);
            }
            gauge!("levee_store_bytes", "store" => "database").set(database as f64);
            gauge!("levee_store_bytes", "store" => "images").set(images as f64);
            gauge!("levee_store_bytes", "store" => "offsite").set(offsite as f64);
        });
        Ok(handle.render())
    }

    fn dir_sizes(&self) -> (u64, u64) {
        let mut sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
        match *sizes {
            Some((at, images, offsite)) if at.elapsed() < SIZES_FOR => (images, offsite),
            _ => {
                let images = dir_bytes(&self.data_dir.join("images"));
                let offsite = dir_bytes(&self.data_dir.join("offsite"));
                *sizes = Some((Instant::now(), images, offsite));
                (images, offsite)
            }
        }
    }
}

fn describe() {
    describe_gauge!("levee_appliances", "Appliances in the store by state.");
    describe_gauge!(
        "levee_appliance_heartbeat_age_seconds",
        Unit::Seconds,
        "Seconds since the appliance's last heartbeat or status report (not retired ones)."
    );
    describe_gauge!(
        "levee_appliance_backup_age_seconds",
        Unit::Seconds,
        "Seconds since the end of the appliance's newest backup run that made a snapshot."
    );
    describe_gauge!(
        "levee_appliance_backup_failures_in_row",
        "Failed backup runs in a row of the appliance's worst backup stream (0: its latest runs succeeded)."
    );
    describe_gauge!(
        "levee_store_bytes",
        Unit::Bytes,
        "Size of the central database, the image store and the offsite store under the data directory."
    );
}

/// Bytes of the regular files under `dir` (0 if it does not exist); not
/// following symbolic links, so a link cannot make it walk the disk.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}
