//! Runs the Mosquitto client-library conformance sequences against mqttlink.
//!
//! The sequences live outside the repository, in `../shared/conformance/mosquitto`
//! beside the checkout. Each one is played by a scripted fake broker on a loopback
//! port against a real mqttlink client. See `docs/conformance.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/conformance/notation.rs"]
mod notation;
#[path = "support/conformance/player.rs"]
mod player;
#[path = "support/conformance/sequences.rs"]
mod sequences;

use std::path::{Path, PathBuf};

/// Directory of the Mosquitto sequence files, beside the repository.
fn sequence_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/mosquitto")
}

#[test]
fn sequence_files_load() {
    let dir = sequence_dir();
    if !dir.is_dir() {
        println!("conformance sequences absent: {}", dir.display());
        return;
    }
    let sequences = sequences::load_dir(&dir).unwrap();
    assert_eq!(sequences.len(), 635);
}
