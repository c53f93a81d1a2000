//! `levee`: the Levee operator CLI and server. See `levee --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // One TLS crypto provider for the whole process (ring, as reqwest and
    // rcgen use); tough's dependency tree also compiles aws-lc-rs in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = levee_provisioner::cli::Cli::parse();
    levee_provisioner::cli::init_logging(cli.verbose);
    match levee_provisioner::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
