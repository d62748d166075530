//! `tlspeek-loadgen`: see the library's documentation (`src/lib.rs`) for the modes.

use clap::Parser;

fn main() {
    if let Err(e) = tlspeek_loadgen::run(tlspeek_loadgen::Cli::parse()) {
        eprintln!("tlspeek-loadgen: {e:#}");
        std::process::exit(1);
    }
}
