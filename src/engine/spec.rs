//! The hardened container specification of a sandbox.
//!
//! Owns every isolation and limit setting, in one pure function from
//! [`Config`] to the engine's create body, so that the whole security posture
//! can be read (and unit-tested) in one place. It does not talk to the
//! engine; [`super::Engine`] does.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};

use crate::config::Config;

/// Label present on every container this program creates.
pub const MANAGED_LABEL: &str = "mcp-code-exec.managed";
/// Label naming the server instance that owns a container (see [`super::Owner`]).
pub const OWNER_LABEL: &str = "mcp-code-exec.owner";

/// Where user code starts, and its `HOME`.
pub const WORKSPACE: &str = "/workspace";
const TMP_OPTIONS: &str = "rw,noexec,nosuid,nodev,size=64m,mode=1777";
/// Where the agent writes each run's code as `main.py` (see agent.py), apart
/// from the user's `/tmp` and `/workspace`.
pub const CODE_DIR: &str = "/run/code";
/// Where runs install packages (`packages=[…]`, `pip install`): the one
/// writable place that allows exec, so installed C extensions load; never
/// setuid, no devices; its size is `MCP_BRIDGE_PACKAGES_BYTES`, memory
/// counted in the sandbox's limit like every tmpfs.
pub const PACKAGES_DIR: &str = "/run/packages";
/// `/dev/shm` is memory too; keep it small (it also counts against the memory limit).
const SHM_BYTES: i64 = 64 * 1024 * 1024;
const NOFILE: i64 = 1024;
/// Under a kernel shared with the host, RLIMIT_NPROC counts every process
/// of the uid on the host, across all sandboxes: the per-container pids
/// cgroup is the real limit, and this only a backstop.
const NPROC: i64 = 4096;
/// Under gVisor the host's pids cgroup holds gVisor's own threads, not the
/// sandbox's processes (measured: 38 for an idle data sandbox, 690 with 128
/// sleeping processes in it, 74 with 100 threads), so `MCP_BRIDGE_PIDS`
/// becomes the sandbox kernel's RLIMIT_NPROC (one kernel per sandbox: the
/// count is the sandbox's alone, threads included, as the cgroup's is under
/// runc) and the cgroup bounds gVisor's threads at this much per process.
const GVISOR_HOST_TASKS_BASE: i64 = 64;
const GVISOR_HOST_TASKS_PER_PROCESS: i64 = 8;

/// The container's pids cgroup limit and its RLIMIT_NPROC.
fn process_limits(config: &Config) -> (i64, i64) {
    if config.gvisor() {
        let host_tasks = config
            .pids_limit
            .saturating_mul(GVISOR_HOST_TASKS_PER_PROCESS)
            .saturating_add(GVISOR_HOST_TASKS_BASE);
        (host_tasks, config.pids_limit)
    } else {
        (config.pids_limit, NPROC)
    }
}

/// Everything the engine needs to create one sandbox container. Opaque
/// outside this module, so that only the engine speaks the engine's types.
#[derive(Debug, Clone)]
pub struct ContainerSpec(pub(super) ContainerCreateBody);

/// The spec of one sandbox container running `command` (the agent's, from
/// the sandbox module: the engine knows nothing of agents).
pub fn container_spec(
    config: &Config,
    image: &str,
    owner: &str,
    command: Vec<String>,
) -> ContainerSpec {
    ContainerSpec(container_body(config, image, owner, command))
}

fn container_body(
    config: &Config,
    image: &str,
    owner: &str,
    command: Vec<String>,
) -> ContainerCreateBody {
    let labels = HashMap::from([
        (MANAGED_LABEL.to_owned(), "true".to_owned()),
        (OWNER_LABEL.to_owned(), owner.to_owned()),
    ]);
    let ulimit = |name: &str, limit: i64| ResourcesUlimits {
        name: Some(name.to_owned()),
        soft: Some(limit),
        hard: Some(limit),
    };
    let memory = i64::try_from(config.memory_bytes).unwrap_or(i64::MAX);
    // `Config` bounds the CPUs to 0.01..=1024 (`MIN_CPUS`, `MAX_CPUS`), so this is
    // 1e7..=1.024e12 nanoCPUs: a whole number far inside i64, never 0 (which
    // the engine would read as "no limit").
    #[allow(clippy::cast_possible_truncation)]
    let nano_cpus = config.cpus.map(|cpus| (cpus * 1e9).round() as i64);
    let (pids_limit, nproc) = process_limits(config);
    let host_config = HostConfig {
        network_mode: Some("none".into()),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        memory: Some(memory),
        // Equal to memory: no swap on top of the limit.
        memory_swap: Some(memory),
        pids_limit: Some(pids_limit),
        nano_cpus,
        ulimits: Some(vec![ulimit("nofile", NOFILE), ulimit("nproc", nproc)]),
        // The agent is the container's init (PID 1): it reaps orphans and is
        // the only holder of the protocol pipes. A separate init would hold
        // them too, and could be used to forge frames (see agent.py).
        init: Some(false),
        // Output travels only over the attach stream. With an engine-side log
        // driver, a sandbox that floods its output fills the host's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        tmpfs: Some(HashMap::from([
            ("/tmp".to_owned(), TMP_OPTIONS.to_owned()),
            (
                WORKSPACE.to_owned(),
                format!(
                    "rw,noexec,nosuid,nodev,size={},mode=1777",
                    config.workspace_bytes
                ),
            ),
            (
                CODE_DIR.to_owned(),
                // Room for the largest code a call may bring, in UTF-8, and
                // for the images of a run (display.py writes them there).
                format!(
                    "rw,noexec,nosuid,nodev,size={},mode=1777",
                    config.max_code_bytes as u64
                        + u64::from(config.max_images) * config.max_image_bytes
                        + (1 << 20)
                ),
            ),
            (
                PACKAGES_DIR.to_owned(),
                format!(
                    "rw,exec,nosuid,nodev,size={},mode=1777",
                    config.packages.sandbox_bytes
                ),
            ),
        ])),
        shm_size: Some(SHM_BYTES),
        ipc_mode: Some("private".into()),
        // gVisor (`runsc`) or any runtime registered with the engine; the
        // engine's default when unset.
        runtime: config.oci_runtime.clone(),
        // If this process dies, the agent sees stdin close, exits, and the
        // engine removes the container: no orphans even after a crash.
        auto_remove: Some(true),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(command),
        cmd: Some(vec![]),
        user: Some(config.container_user.clone()),
        // Not /workspace: the engine would create that directory itself and
        // the tmpfs would lose its mode. The agent changes into it instead.
        working_dir: Some("/".into()),
        env: Some(environment(config)),
        hostname: Some("sandbox".into()),
        network_disabled: Some(true),
        labels: Some(labels),
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The sandbox's environment. Native thread pools (OpenBLAS, OpenMP, MKL)
/// size themselves by the CPUs they see, which is the host's, not
/// `MCP_BRIDGE_CPUS`: cap them at the sandbox's share.
fn environment(config: &Config) -> Vec<String> {
    let mut env = vec![
        format!("HOME={WORKSPACE}"),
        "PYTHONDONTWRITEBYTECODE=1".into(),
        "LANG=C.UTF-8".into(),
    ];
    if let Some(cpus) = config.cpus {
        // At least one thread; a fractional share rounds up.
        let threads = cpus.ceil().max(1.0);
        for name in ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
            env.push(format!("{name}={threads}"));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hardening_setting_is_present() {
        let config = Config {
            cpus: Some(1.5),
            ..Config::default()
        };
        let command = vec!["python3".to_owned(), "-c".into(), "print(1)".into()];
        let body = container_body(&config, "img:tag", "host:1:2", command);
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        assert_eq!(host.memory, Some(512 << 20));
        assert_eq!(host.memory_swap, host.memory);
        assert_eq!(host.pids_limit, Some(128));
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(
            host.log_config.as_ref().unwrap().typ.as_deref(),
            Some("none")
        );
        assert!(
            host.binds.is_none() && host.mounts.is_none(),
            "no bind mounts"
        );
        let tmpfs = host.tmpfs.as_ref().unwrap();
        for path in ["/tmp", WORKSPACE, CODE_DIR] {
            assert!(
                tmpfs[path].contains("noexec,nosuid,nodev"),
                "{path}: {}",
                tmpfs[path]
            );
        }
        // The package directory alone allows exec, never setuid or devices.
        assert!(
            tmpfs[PACKAGES_DIR].starts_with("rw,exec,nosuid,nodev,size=268435456,"),
            "{}",
            tmpfs[PACKAGES_DIR]
        );
        let ulimits = host.ulimits.as_ref().unwrap();
        assert!(ulimits.iter().any(|u| u.name.as_deref() == Some("nofile")));
        assert!(ulimits.iter().any(|u| u.name.as_deref() == Some("nproc")));
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(body.network_disabled, Some(true));
        assert_eq!(body.labels.as_ref().unwrap()[OWNER_LABEL], "host:1:2");
        assert_eq!(body.entrypoint.as_ref().unwrap()[2..], ["print(1)"]);
        assert!(
            body.env
                .as_ref()
                .unwrap()
                .contains(&"OPENBLAS_NUM_THREADS=2".to_owned()),
            "1.5 CPUs: native thread pools of 2"
        );
        assert_eq!(
            host.runtime, None,
            "the engine's default runtime unless asked"
        );
        let gvisor = Config {
            oci_runtime: Some("runsc".into()),
            ..Config::default()
        };
        let body_gvisor = container_body(&gvisor, "img:tag", "host:1:2", vec![]);
        let host_gvisor = body_gvisor.host_config.unwrap();
        assert_eq!(host_gvisor.runtime.as_deref(), Some("runsc"));
        // gVisor's kernel counts the sandbox's processes; the host's
        // cgroup, gVisor's own threads.
        assert_eq!(host_gvisor.pids_limit, Some(64 + 8 * 128));
        let nproc = |host: &HostConfig| {
            host.ulimits
                .as_ref()
                .unwrap()
                .iter()
                .find(|u| u.name.as_deref() == Some("nproc"))
                .map(|u| (u.soft, u.hard))
        };
        assert_eq!(nproc(&host_gvisor), Some((Some(128), Some(128))));
        assert_eq!(nproc(host), Some((Some(NPROC), Some(NPROC))));
    }
}
