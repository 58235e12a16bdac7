//! Podman's seccomp profile, made as strict as Docker's about the kernel keyring.
//!
//! Docker's default seccomp profile refuses `add_key`, `keyctl` and
//! `request_key`; Podman's (containers-common) allows `keyctl`. The kernel
//! keyring of the sandbox's uid is shared by every container of that uid on
//! the host and outlives them: a run could link a named keyring there that
//! later runs find. On Podman, sandboxes therefore get Podman's own default
//! profile with the keyring syscalls taken out, written where Podman (on
//! this host: its API takes a profile only as a path) reads it.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The syscalls of the kernel keyring, refused as Docker's profile does.
const KEYRING_SYSCALLS: [&str; 3] = ["add_key", "keyctl", "request_key"];

/// Where containers-common looks for the default profile, in order.
const PODMAN_PROFILES: [&str; 2] = [
    "/etc/containers/seccomp.json",
    "/usr/share/containers/seccomp.json",
];

/// `profile` (an OCI seccomp profile in JSON) with the keyring syscalls
/// removed from every rule that allows them, so the profile's default
/// action (an error) refuses them.
pub fn without_keyring(profile: &str) -> Result<String, serde_json::Error> {
    let mut profile: serde_json::Value = serde_json::from_str(profile)?;
    if let Some(rules) = profile
        .get_mut("syscalls")
        .and_then(serde_json::Value::as_array_mut)
    {
        rules.retain_mut(|rule| {
            if rule.get("action").and_then(serde_json::Value::as_str) != Some("SCMP_ACT_ALLOW") {
                return true;
            }
            let Some(names) = rule
                .get_mut("names")
                .and_then(serde_json::Value::as_array_mut)
            else {
                return true;
            };
            names.retain(|name| {
                !name
                    .as_str()
                    .is_some_and(|name| KEYRING_SYSCALLS.contains(&name))
            });
            !names.is_empty()
        });
    }
    serde_json::to_string(&profile)
}

/// Writes Podman's default profile without the keyring syscalls into a
/// directory only this user can write, and returns its path.
pub fn podman_profile() -> io::Result<PathBuf> {
    let (source, profile) = PODMAN_PROFILES
        .iter()
        .find_map(|path| Some((*path, std::fs::read_to_string(path).ok()?)))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "Podman's default seccomp profile is not at {}",
                    PODMAN_PROFILES.join(" or ")
                ),
            )
        })?;
    let strict = without_keyring(&profile).map_err(|error| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{source}: {error}"))
    })?;
    let dir = private_dir()?;
    let path = dir.join("seccomp-podman.json");
    // Unique per writer: several engines (of this process or others) may
    // write at once; each renames its own complete copy into place.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let scratch = dir.join(format!(
        "seccomp-podman.json.{}.{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&scratch, strict)?;
    std::fs::rename(&scratch, &path)?;
    Ok(path)
}

/// `mcp-code-exec-<uid>` under the user's runtime directory (or the
/// temporary one): created mode 0700, and refused unless it is a directory
/// of this user that no one else can write.
fn private_dir() -> io::Result<PathBuf> {
    let uid = std::fs::metadata("/proc/self")?.uid();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("mcp-code-exec-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    check_private(&dir, uid)?;
    Ok(dir)
}

fn check_private(dir: &Path, uid: u32) -> io::Result<()> {
    let metadata = std::fs::symlink_metadata(dir)?;
    if metadata.is_dir() && metadata.uid() == uid && metadata.mode() & 0o022 == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory only this user can write",
                dir.display()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keyring_syscalls_leave_every_allow_rule_and_nothing_else_does() {
        let profile = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read", "keyctl", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["keyctl"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["add_key", "request_key"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ]
        }"#;
        let strict: serde_json::Value =
            serde_json::from_str(&without_keyring(profile).unwrap()).unwrap();
        assert_eq!(strict["defaultAction"], "SCMP_ACT_ERRNO");
        let rules = strict["syscalls"].as_array().unwrap();
        assert_eq!(rules.len(), 2, "a rule left with no syscall is dropped");
        assert_eq!(rules[0]["names"], serde_json::json!(["read", "write"]));
        assert_eq!(rules[1]["action"], "SCMP_ACT_ERRNO", "refusals stay");
        assert!(without_keyring("not json").is_err());
    }

    #[test]
    fn the_profile_directory_must_be_private() {
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        let dir = private_dir().unwrap();
        assert!(check_private(&dir, uid).is_ok());
        assert!(
            check_private(&dir, uid + 1).is_err(),
            "someone else's directory"
        );
        assert!(
            check_private(Path::new("/tmp"), uid).is_err(),
            "a directory others can write"
        );
    }
}
