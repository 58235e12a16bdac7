//! mcp-code-exec: an MCP server whose one tool, `run_python`, runs Python in
//! warm, hardened containers at interactive speed.
//!
//! # Layout
//! - [`config`]: the `MCP_BRIDGE_*` variables, parsed and validated (pure).
//! - [`engine`]: the container engine (Docker/Podman via bollard) and, in
//!   [`engine::spec`], the hardened container specification.
//! - [`sandbox`]: one container and its agent (`sandbox/agent.py`, PID 1 in
//!   the container); [`sandbox::protocol`] is the frame format between them.
//! - [`pool`]: warm sandboxes, leases, reset/recycle off the caller's path.
//! - [`execution`]: one call from request to [`report::RunReport`].
//! - [`report`]: the result's shape and its text renderings.
//! - [`proxy`]: the user's MCP servers: discovery, warm host-side clients,
//!   the metadata and answers of a run's tool calls.
//! - [`backend`]: assembles the stack in the background; shutdown.
//! - [`mcp`]: the stdio MCP server (rmcp).
//! - [`metrics`]: Prometheus metrics and the health side port (axum).
//!
//! Data flows `mcp` → `backend` → `execution` → `pool` → `sandbox` →
//! `engine`, with `proxy` answering the tool calls a run makes. Only
//! `engine` imports bollard; only `mcp` serves MCP (and `proxy` is the MCP
//! client of the user's servers). See ARCHITECTURE.md.

pub mod backend;
pub mod config;
pub mod engine;
pub mod execution;
pub mod mcp;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod report;
pub mod sandbox;
