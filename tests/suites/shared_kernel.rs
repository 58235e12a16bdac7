//! What sandboxes share through the host's kernel: limits it keeps per uid,
//! which every sandbox's uid (`MCP_BRIDGE_CONTAINER_USER`, 65534) shares
//! with the others and with the host's own processes of that uid (README,
//! "Security model"). Measured, not prevented: the test fails when the
//! sharing is gone, and the README then says too much.

use std::time::Duration;

use crate::util::{Shared, block_on, run_on, wait_until};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::report::RunStatus;

static SERVICE: Shared = Shared::new();

/// Tries one inotify instance: `ok`, or the error.
const ONE_INOTIFY: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
print("ok" if fd >= 0 else os.strerror(ctypes.get_errno()))
"#;

engine_test! {
    /// A session that takes every inotify instance its uid may have
    /// (`fs.inotify.max_user_instances`, 128 by default) leaves none to any
    /// other sandbox for as long as it lives; when it ends they are back.
    fn a_session_holding_the_uids_inotify_instances_starves_other_sandboxes() {
        let service = SERVICE.get();
        let session = |code: &str, end_session: bool| CallRequest {
            code: code.into(),
            timeout_secs: Some(20.0),
            session: Some("inotify".into()),
            end_session,
            ..CallRequest::default()
        };
        let hold = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
held = []
while (fd := libc.inotify_init1(0)) >= 0:
    held.append(fd)
print(len(held) > 0, os.strerror(ctypes.get_errno()))
"#;
        let held = block_on(call(service, &session(hold, false)));
        assert_eq!(held.status, RunStatus::Success, "{held:#?}");
        assert_eq!(held.stdout, "True Too many open files\n");
        let other = run_on(service, ONE_INOTIFY, Some(20.0));
        assert_eq!(other.stdout, "Too many open files\n", "{other:#?}");
        block_on(call(service, &session("", true)));
        wait_until(
            "the session's container to go, and its instances with it",
            Duration::from_secs(15),
            || run_on(service, ONE_INOTIFY, Some(20.0)).stdout == "ok\n",
        );
    }
}
