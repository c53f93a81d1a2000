//! The one seam between the daemon and the installer (`crate::install`,
//! written separately): the daemon calls [`install_step`] when the appliance
//! booted from the network and its plan says install, and reports the
//! outcome (`failed` with the returned reason) to the server.

use std::path::Path;

use levee_proto::enroll::InstallPlan;

/// Installs to disk according to `plan`; `Err` carries the reason ops sees
/// in `levee appliance show`.
pub fn install_step(plan: &InstallPlan, state_dir: &Path) -> Result<(), String> {
    let _ = state_dir;
    if !plan.install {
        return Ok(());
    }
    super::logging::Log::new().warn(format_args!(
        "install requested; installer not linked in this build"
    ));
    Err("install requested; installer not linked in this build".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_install_is_a_no_op() {
        let plan = InstallPlan {
            install: false,
            reinstall: false,
            min_disk_bytes: 0,
            image: None,
        };
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(install_step(&plan, dir.path()), Ok(()));
        let plan = InstallPlan {
            install: true,
            ..plan
        };
        assert!(install_step(&plan, dir.path()).is_err());
    }
}
