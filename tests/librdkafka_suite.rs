//! librdkafka's own integration tests against `tally broker` (issue 19):
//! `scripts/librdkafka-suite fast` builds librdkafka's test runner from the
//! rdkafka-sys source in the cargo registry (once; later runs reuse the build
//! in `target/librdkafka-suite/`), starts this build's broker on a free
//! loopback port and runs the fast subset of the applicable tests listed in
//! `scripts/librdkafka-tests.txt` (produce and consume, consumer groups, admin
//! APIs, transactions). Every one must pass. `docs/librdkafka-suite.md` says
//! which tests do not apply, and why. The build needs gcc, g++ and make: under
//! CI=true a missing one fails the test; elsewhere the test is skipped.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{require_tool, run, tail};

/// A cold build of librdkafka and its tests (minutes on two cores) and the
/// fast subset (under two minutes).
const TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[test]
fn the_fast_librdkafka_tests_pass() {
    for tool in ["gcc", "g++", "make"] {
        if require_tool(tool).is_none() {
            return;
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/librdkafka-suite");
    let mut cmd = Command::new(script);
    cmd.arg("fast")
        .env("TALLY_BIN", env!("CARGO_BIN_EXE_tally"));
    let out = run(&mut cmd, b"", TIMEOUT);
    assert!(
        out.status.success(),
        "scripts/librdkafka-suite fast exited with {}:\n{}\n--- stderr ---\n{}",
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    );
}
