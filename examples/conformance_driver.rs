//! Conformance driver: starts one mqttlink client per line read from stdin.
//!
//! Each line is `PORT PROTOCOL_LEVEL CLEAN_START [COMMAND]`. For each line the driver
//! starts a client that connects to 127.0.0.1:PORT with client id `fuzzish`,
//! keep-alive 60 s, the given protocol level (3, 4 or 5) and clean start flag (1 or
//! 0). Once connected, the client performs COMMAND: `publish-0/1/2`,
//! `subscribe-0/1/2`, `subscribe-multiple`, `unsubscribe` or `unsubscribe-multiple`.
//! A client runs on its own, so a slow one never holds up the next line. The driver exits when stdin
//! closes. A scripted broker on the other end judges what the client does; see
//! `docs/conformance.md`.
//!
//! ```text
//! echo "1883 5 1 publish-1" | cargo run --example conformance_driver
//! ```
//!
//! Logging goes to stderr, filtered by `RUST_LOG` (default `info`).

// The driver uses only part of the code it shares with the test runner.
#[allow(dead_code)]
#[path = "../tests/support/conformance/commands.rs"]
mod commands;

use std::process::ExitCode;

use tokio::io::{AsyncBufReadExt, BufReader};
use tracing_subscriber::EnvFilter;

use commands::DriverLine;

#[actix_rt::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => start(&line),
            Ok(None) => {
                tracing::info!("stdin closed, driver stopping");
                return ExitCode::SUCCESS;
            }
            Err(error) => {
                tracing::error!(%error, "reading stdin failed");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Starts the client that `line` requests and leaves it running on its own.
fn start(line: &str) {
    let request: DriverLine = match line.parse() {
        Ok(request) => request,
        Err(error) => {
            tracing::error!(line, %error, "invalid request line");
            return;
        }
    };

    let started = match commands::start_client(request.port, request.version, request.clean_start) {
        Ok(started) => started,
        Err(error) => {
            tracing::error!(port = request.port, %error, "client not started");
            return;
        }
    };
    tracing::info!(port = request.port, line, "client started");

    actix_rt::spawn(async move {
        let port = request.port;
        let report = commands::run_client(started, request.command).await;
        tracing::info!(port, %report, "client stopped");
    });
}
