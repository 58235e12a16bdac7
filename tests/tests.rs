//! The integration tests, one crate (ripgrep's `tests/tests.rs` layout): one
//! compile, one set of helpers ([`util`]), one skip rule ([`engine_test!`]).
//! Each suite is a module in `tests/suites/`; a folder, so cargo finds no
//! other test target. Tests marked `engine_test!` run against the real
//! container engine; the others need none.

#[macro_use]
mod util;

#[path = "suites/architecture.rs"]
mod architecture;
#[path = "suites/bad_input.rs"]
mod bad_input;
#[path = "suites/cli.rs"]
mod cli;
#[path = "suites/console.rs"]
mod console;
#[path = "suites/data.rs"]
mod data;
#[path = "suites/e2e_mcp.rs"]
mod e2e_mcp;
#[path = "suites/egress.rs"]
mod egress;
#[path = "suites/fidelity.rs"]
mod fidelity;
#[path = "suites/host_files.rs"]
mod host_files;
#[path = "suites/host_memory.rs"]
mod host_memory;
#[path = "suites/http.rs"]
mod http;
#[path = "suites/http_load.rs"]
mod http_load;
#[path = "suites/images.rs"]
mod images;
#[path = "suites/isolation.rs"]
mod isolation;
#[path = "suites/lifecycle.rs"]
mod lifecycle;
#[path = "suites/observability.rs"]
mod observability;
#[path = "suites/packages.rs"]
mod packages;
#[path = "suites/policy.rs"]
mod policy;
#[path = "suites/pool.rs"]
mod pool;
#[path = "suites/proxy.rs"]
mod proxy;
#[path = "suites/sessions.rs"]
mod sessions;
#[path = "suites/shared_kernel.rs"]
mod shared_kernel;
#[path = "suites/skills.rs"]
mod skills;
#[path = "suites/stdio.rs"]
mod stdio;
