//! Only for `benches/profile.rs`, which includes this file by path: the
//! driver itself is `tests/util/server.rs` (the integration tests' helper).
//! Goes away when the bench names `tests/util/server.rs` directly.

#[path = "../util/server.rs"]
mod driver;

pub use driver::*;
