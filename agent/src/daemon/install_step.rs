//! The one seam between the daemon and the installer ([`crate::install`]):
//! the daemon calls [`install_step`] when the appliance booted from the
//! network and its plan says install, reports the outcome (`failed` with
//! the returned reason) to the server, and then [`reboot_step`]s into the
//! installed system. After a disk boot it calls [`commit_step`] once its
//! first heartbeat got through, so the boot loader keeps the slot.

use std::path::Path;

use levee_proto::enroll::InstallPlan;

use crate::install::{self, CommitOutcome, InstallOptions};

/// What a finished install put where (for the status report and the log).
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    /// The disk written, e.g. `/dev/vda`.
    pub disk: String,
    /// The slot written (`a`).
    pub slot: String,
    pub image_version: String,
    /// Files of the state directory (credential, cached configuration)
    /// now on the data partition.
    pub state_files: u64,
    pub seconds: f64,
}

/// Installs to disk according to `plan`, carrying `state_dir` (the
/// credential and cached configuration) onto the data partition; `log`
/// receives one line per step. `Ok(None)`: the plan asks for no install.
/// `Err` carries the reason ops sees in `levee appliance show`.
pub fn install_step(
    plan: &InstallPlan,
    state_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Option<Installed>, String> {
    if !plan.install {
        return Ok(None);
    }
    let opts = InstallOptions {
        state_dir: state_dir.to_path_buf(),
        ..InstallOptions::default()
    };
    let report = install::install(plan, &opts, log).map_err(|e| e.to_string())?;
    Ok(Some(Installed {
        disk: report.disk,
        slot: report.slot,
        image_version: report.image_version,
        state_files: report.state_files,
        seconds: report.durations.total,
    }))
}

/// Reboots into the installed system; returns only if that failed.
pub fn reboot_step() -> Result<(), String> {
    install::reboot().map_err(|e| e.to_string())
}

/// Marks the running disk slot good (a no-op on a network boot).
pub fn commit_step() -> Result<CommitOutcome, String> {
    install::commit_boot().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_install_is_a_no_op_and_a_bad_plan_is_refused_before_any_disk() {
        let plan = InstallPlan {
            install: false,
            reinstall: false,
            min_disk_bytes: 0,
            image: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut lines = Vec::new();
        let mut log = |l: &str| lines.push(l.to_string());
        assert_eq!(install_step(&plan, dir.path(), &mut log), Ok(None));
        let plan = InstallPlan {
            install: true,
            ..plan
        };
        let err = install_step(&plan, dir.path(), &mut log).unwrap_err();
        assert!(err.contains("names no image"), "{err}");
        assert!(lines.is_empty(), "{lines:?}");
    }
}
