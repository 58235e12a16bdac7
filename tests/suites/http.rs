//! MCP over streamable HTTP (`serve --http`): the official Python SDK's
//! streamable-HTTP client against the built binary (tests/e2e/http_client.py:
//! run_python, progress, artifacts; two principals kept apart: sessions,
//! artifacts, the quota, MCP session ids, 2026-07-28 stateless requests;
//! tokens missing, wrong and revoked, a bad Origin, a body over 16 MiB; a
//! call in flight at SIGTERM still answered), and the refusal to listen
//! beyond loopback without tokens.

use crate::e2e_mcp::sdk_script;
use crate::util::server::run_binary;

engine_test! {
    fn the_official_sdk_over_streamable_http_with_two_principals() {
        sdk_script("http_client.py", "all http checks passed");
    }
}

/// Beyond loopback, tokens are required: the server refuses to start, and
/// says which variable to set, before it starts anything.
#[test]
fn a_non_loopback_listener_without_tokens_refuses_to_start() {
    for args in [&["serve", "--http", "0.0.0.0:0"][..], &["serve"][..]] {
        let output = run_binary(args, "", &[("MCP_BRIDGE_HTTP_ADDR", "0.0.0.0:0")]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("MCP_BRIDGE_HTTP_TOKENS_FILE") && stderr.contains("0.0.0.0:0"),
            "{args:?}: {stderr}"
        );
    }
    let output = run_binary(
        &["serve", "--http", "127.0.0.1:0"],
        "",
        &[("MCP_BRIDGE_HTTP_TOKENS_FILE", "/nonexistent/tokens")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read MCP_BRIDGE_HTTP_TOKENS_FILE /nonexistent/tokens"),
        "{stderr}"
    );
}
