//! mcp-code-exec: an MCP server whose one tool, `run_python`, runs Python in
//! warm, hardened containers at interactive speed.
//!
//! # Layout, from the top down (each module imports only modules below it)
//! - [`frontend`]: the stdio MCP server (rmcp): the tool's contract, the
//!   capabilities resource, cancellation, report → MCP result.
//! - [`http`]: MCP over streamable HTTP (rmcp's transport on axum): bearer
//!   tokens, the protected-resource metadata, Host/Origin checks, drain.
//! - [`side_port`]: `/metrics`, `/healthz`, `/readyz` and the console over
//!   HTTP (axum); beyond loopback the console asks for the HTTP tokens.
//! - [`call`]: one `run_python` call from request to [`report::RunReport`]:
//!   validation, tools, lease, run, classification, observation.
//! - [`service`]: engine, image, pool, sessions and MCP servers assembled in
//!   the background; readiness; shutdown.
//! - [`sessions`]: named interpreters kept between calls, each holding a
//!   sandbox of the pool; their order, limit, idle expiry and end.
//! - [`pool`]: warm sandboxes, leases, reset/recycle off the caller's path.
//! - [`proxy`]: the user's MCP servers: discovery, warm host-side clients,
//!   the tools a run may call and the answers to its calls.
//! - [`egress`]: the network a run may reach: the HTTP proxy served on the
//!   streams the sandbox opens, the operator's allowlist, the run's bounds.
//! - [`sandbox`]: one container and its agent (`sandbox/agent.py`, PID 1 in
//!   the container); [`sandbox::protocol`] is the frame format between them.
//! - [`hostfiles`]: the user's files by path: read roots, the write root,
//!   resolution beneath a root (`openat2`, or an `O_NOFOLLOW` walk), bounded
//!   reads into the frames that carry them, atomic saves.
//! - [`engine`]: the container engine (Docker/Podman via bollard) and, in
//!   [`engine::spec`], the hardened container specification.
//! - [`skills`]: code runs save for later: the host's store (per principal,
//!   one version back), the sandbox's `@skills` calls, the MCP manifests.
//! - [`console`]: the recent calls in memory, who may see which, their live
//!   feed and the page that shows them (escaped; script and style built in).
//! - [`audit`]: every call as one JSON line: its record and bounds, the
//!   writer thread, rotation by size.
//! - [`report`]: the result's shape, the status vocabulary, text renderings.
//! - [`artifacts`]: the files runs return, kept as `artifact://` resources.
//! - [`images`]: the images runs return, read strictly and rebuilt on the host.
//! - [`allowlist`]: the operator's network allowlist (host patterns, networks,
//!   refused address ranges); pure.
//! - [`policy`]: which tools of the user's servers runs may call: the
//!   servers' `allowTools`/`denyTools` and `MCP_BRIDGE_TOOL_POLICY`; pure.
//! - [`principals`]: whom a call is for, and each one's calls in flight.
//! - [`metrics`]: the Prometheus registry; a leaf every module reports into.
//! - [`config`]: the `MCP_BRIDGE_*` variables, parsed and validated (pure).
//!
//! Only `engine` imports bollard; only `frontend` serves MCP (over the transports of `frontend` and `http`) (and `proxy` is
//! the MCP client of the user's servers). `tests/tests.rs` checks that the
//! imports between these modules form no cycle. See ARCHITECTURE.md.

pub mod allowlist;
pub mod approval;
pub mod artifacts;
pub mod audit;
pub mod call;
pub mod config;
pub mod console;
pub mod egress;
pub mod engine;
pub mod frontend;
pub mod hostfiles;
pub mod http;
pub mod images;
pub mod metrics;
pub mod packages;
pub mod policy;
pub mod pool;
pub mod principals;
pub mod proxy;
pub mod report;
pub mod sandbox;
pub mod service;
pub mod sessions;
pub mod side_port;
pub mod skills;
