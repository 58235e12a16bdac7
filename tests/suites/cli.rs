//! The `run` and `doctor` subcommands of the built binary.

use crate::util::server::run_binary as mcp_code_exec;

engine_test! {
    fn run_prints_the_result_and_exits_by_status() {
        let ok = mcp_code_exec(&["run"], "print(6*7)", &[]);
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "42\n");
        assert!(ok.status.success());

        let failed = mcp_code_exec(
            &["run", "-", "--timeout", "5"],
            "import sys\nsys.exit(3)",
            &[],
        );
        assert_eq!(
            String::from_utf8_lossy(&failed.stdout),
            "status: error\nexit: 3\nerror: exited with code 3\n"
        );
        assert_eq!(failed.status.code(), Some(1));

        let json = mcp_code_exec(&["run"], "print(1)", &[("MCP_BRIDGE_OUTPUT_MODE", "json")]);
        let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(report["status"], "success");
    }
}

engine_test! {
    fn doctor_passes_with_an_engine_and_says_what_to_fix_without_one() {
        let healthy = mcp_code_exec(&["doctor"], "", &[]);
        let text = String::from_utf8_lossy(&healthy.stdout);
        assert!(healthy.status.success(), "{text}");
        assert!(
            text.contains("ok    engine:") && text.contains("ok    run: print(6*7)"),
            "{text}"
        );
        assert!(
            text.contains("ok    OCI runtime: runc (engine's runtimes: ")
                && text.contains("; rootless: no"),
            "{text}"
        );
        assert!(text.ends_with("all checks passed\n"), "{text}");

        // Asking for Podman gets Podman, or a clear no: never Docker's socket
        // (whether this machine runs Podman's service or not).
        let podman = mcp_code_exec(&["doctor"], "", &[("MCP_BRIDGE_RUNTIME", "podman")]);
        let text = String::from_utf8_lossy(&podman.stdout);
        let engine = text.lines().find(|line| line.starts_with("ok    engine: "));
        match engine {
            Some(line) => assert!(
                line.contains("Podman") && !line.contains("docker.sock"),
                "{text}"
            ),
            None => {
                assert_eq!(podman.status.code(), Some(1), "{text}");
                assert!(
                    text.contains(
                        "FAIL  container engine: MCP_BRIDGE_RUNTIME=podman, but no Podman socket"
                    ),
                    "{text}"
                );
            }
        }

        let unknown = mcp_code_exec(&["doctor"], "", &[("MCP_BRIDGE_OCI_RUNTIME", "nosuch")]);
        let text = String::from_utf8_lossy(&unknown.stdout);
        assert_eq!(unknown.status.code(), Some(1), "{text}");
        assert!(
            text.contains("FAIL  OCI runtime: MCP_BRIDGE_OCI_RUNTIME=nosuch is not a runtime")
                && text.contains("runc"),
            "{text}"
        );

        let broken = mcp_code_exec(
            &["doctor"],
            "",
            &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
        );
        let text = String::from_utf8_lossy(&broken.stdout);
        assert_eq!(broken.status.code(), Some(1));
        assert!(
            text.contains("FAIL  container engine: no container engine answers"),
            "{text}"
        );
        assert!(text.contains("scripts/setup-engine.sh"), "{text}");
    }
}

#[test]
fn invalid_configuration_stops_at_launch_naming_the_variable() {
    let output = mcp_code_exec(&["run"], "print(1)", &[("MCP_BRIDGE_MEMORY", "lots")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MCP_BRIDGE_MEMORY=\"lots\""), "{stderr}");
}

#[test]
fn root_ids_and_unknown_log_levels_stop_at_launch() {
    for (name, value) in [
        ("MCP_BRIDGE_CONTAINER_USER", "00"),
        ("MCP_BRIDGE_CONTAINER_USER", "00:0"),
        ("MCP_BRIDGE_LOG_LEVEL", "verbose"),
    ] {
        for command in [&["serve"][..], &["run"]] {
            let output = mcp_code_exec(command, "print(1)", &[(name, value)]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{name}={value}: {stderr}");
            assert!(
                stderr.contains(&format!("{name}=\"{value}\"")),
                "{name}={value}: {stderr}"
            );
            assert!(output.stdout.is_empty(), "nothing on stdout");
        }
    }
}

engine_test! {
    /// `MCP_BRIDGE_PRELOAD` takes module names as written: `PIL.Image` is
    /// preloaded, not `pil.image` (which does not exist).
    fn preloaded_module_names_keep_their_case() {
        let output = mcp_code_exec(
            &["run"],
            "import sys\nprint('PIL.Image' in sys.modules, 'pandas' in sys.modules)",
            &[
                ("MCP_BRIDGE_PRELOAD", "numpy,PIL.Image"),
                ("MCP_BRIDGE_LOG_LEVEL", "warn"),
            ],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(String::from_utf8_lossy(&output.stdout), "True False\n", "{stderr}");
        assert!(!stderr.contains("MCP_BRIDGE_PRELOAD"), "no preload is missing: {stderr}");
    }
}
