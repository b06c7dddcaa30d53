//! The `phoenix` binary: parse, run, exit with the command's code.

use clap::Parser;
use phoenix::cli::{Cli, Output};

fn main() -> std::process::ExitCode {
    // ring and aws-lc-rs are both compiled into rustls; pick one before any TLS client exists.
    phoenix::providers::cluster::install_crypto_provider();
    let cli = Cli::parse();
    let json = cli.global.output == Output::Json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(phoenix::commands::run(cli)) {
        Ok(code) => code,
        Err(failure) => {
            if !failure.reported {
                if json {
                    phoenix::outln!("{}", failure.to_json());
                } else {
                    eprintln!("{failure}");
                }
            }
            failure.exit
        }
    };
    std::process::ExitCode::from(code.code())
}
