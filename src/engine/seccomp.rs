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

/// Actions that refuse a syscall.
const REFUSALS: [&str; 5] = [
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
];

fn refuses(action: Option<&serde_json::Value>) -> bool {
    action
        .and_then(serde_json::Value::as_str)
        .is_some_and(|action| REFUSALS.contains(&action))
}

/// `profile` (an OCI seccomp profile in JSON) refusing the keyring
/// syscalls: they leave every rule that does not refuse them (allow, log,
/// trace; `names` lists and the older one-`name` rules alike), and when the
/// profile's default does not refuse either, a rule refusing them with
/// `EPERM` (as Docker's does) is added.
pub fn without_keyring(profile: &str) -> Result<String, serde_json::Error> {
    let mut profile: serde_json::Value = serde_json::from_str(profile)?;
    let keyring = |name: &serde_json::Value| {
        name.as_str()
            .is_some_and(|name| KEYRING_SYSCALLS.contains(&name))
    };
    let default_refuses = refuses(profile.get("defaultAction"));
    if let Some(rules) = profile
        .get_mut("syscalls")
        .and_then(serde_json::Value::as_array_mut)
    {
        rules.retain_mut(|rule| {
            if refuses(rule.get("action")) {
                return true;
            }
            if rule.get("name").is_some_and(keyring) {
                return false;
            }
            let Some(names) = rule
                .get_mut("names")
                .and_then(serde_json::Value::as_array_mut)
            else {
                return true;
            };
            names.retain(|name| !keyring(name));
            !names.is_empty()
        });
        if !default_refuses {
            rules.push(serde_json::json!({
                "names": KEYRING_SYSCALLS,
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1
            }));
        }
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
/// temporary one): created mode 0700, used only if it is a directory of this
/// user that no one else can write. Someone else may have made that name
/// first (it is guessable under /tmp): then a new directory of a name of
/// this process's own, which must not exist yet.
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
    if check_private(&dir, uid).is_ok() {
        return Ok(dir);
    }
    let own = base.join(format!(
        "mcp-code-exec-{uid}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&own)?;
    check_private(&own, uid)?;
    Ok(own)
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
    fn a_profile_that_allows_by_default_gets_a_refusal() {
        let profile = r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"name": "keyctl", "action": "SCMP_ACT_LOG"},
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO"}
            ]
        }"#;
        let strict: serde_json::Value =
            serde_json::from_str(&without_keyring(profile).unwrap()).unwrap();
        assert_eq!(
            strict["syscalls"],
            serde_json::json!([
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["add_key", "keyctl", "request_key"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ])
        );
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
