//! cairn-agent: applies a node's profile and instance data at first boot.
//!
//! This binary is installed by `cairn build` at /usr/lib/cairn/cairn-agent, beside the baked profile.

use std::path::Path;
use std::process::ExitCode;

const BAKED_PROFILE: &str = "/usr/lib/cairn/profile.toml";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") => {
            println!("cairn-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        // Checks a profile the way the agent reads it at boot.
        Some("check") => {
            let path = args.get(1).map(String::as_str).unwrap_or(BAKED_PROFILE);
            match cairn_profile::Profile::load_baked(Path::new(path)) {
                Ok(p) => {
                    println!("{}: profile {} {} is valid", path, p.name, p.version);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cairn-agent: {e}");
                    ExitCode::from(2)
                }
            }
        }
        _ => {
            eprintln!("usage: cairn-agent --version | check [PROFILE]");
            ExitCode::from(2)
        }
    }
}
