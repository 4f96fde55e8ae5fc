//! `twill-install SRC... DEST`: copies files onto a node atomically (temporary name in the destination
//! directory, then rename), for the init containers of the Kubernetes DaemonSet, whose image has no shell
//! and no `cp`. DEST is a directory when several sources are given, when it is one, or when it ends in `/`.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: twill-install SRC... DEST\n\
  copies each SRC to DEST atomically (a temporary file in DEST's directory, then rename), keeping its\n\
  permission bits; DEST is a directory when several SRC are given, when it is one, or when it ends in /\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("-h" | "--help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("--version") => {
            println!("twill-install v{}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    if args.len() < 2 {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    }
    let (dest, sources) = args.split_last().expect("two arguments at least");
    let sources: Vec<PathBuf> = sources.iter().map(PathBuf::from).collect();
    match twill_files::install::install(&sources, &PathBuf::from(dest)) {
        Ok(done) => {
            for t in done {
                println!("installed {}", t.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("twill-install: {e}");
            ExitCode::FAILURE
        }
    }
}
