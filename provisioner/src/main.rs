//! `levee`: the Levee operator CLI and server. See `levee --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
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
