//! The `peer` command: chat, file transfer and connectivity probes over WebRTC data channels,
//! with peers found through the signaling server.

mod cli;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let verbose = args.log_filter.is_some();
    let filter = tracing_subscriber::EnvFilter::new(
        args.log_filter
            .as_deref()
            .unwrap_or("warn,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,webrtc=error"),
    );
    tracing_subscriber::registry()
        .with(filter)
        .with((!verbose).then_some(cli::ExpectedErrors))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::run(args));
    // A read of stdin may still be blocked (the server ended the session while stdin stayed
    // open): the process ends without waiting for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", cli::error_chain(&err));
            std::process::ExitCode::FAILURE
        }
    }
}
