//! `levee-agent`: parse arguments, set up logging, run, map errors to exit
//! codes (in `cli::run`). Subcommands live in `cli/`.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
