//! `twilld`: thin entry point; see the library for the parts.

use std::process::ExitCode;

fn main() -> ExitCode {
    let opts = match twilld::flags::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(twilld::flags::Parsed::Run(o)) => o,
        Ok(twilld::flags::Parsed::Help) => {
            print!("{}", twilld::flags::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(twilld::flags::Parsed::Version) => {
            println!("{}", twilld::flags::version_line());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("twilld: {e}\n{}", twilld::flags::USAGE);
            return ExitCode::from(2);
        }
    };
    // One thread is plenty for a control plane and keeps RSS small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twilld: starting runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(twilld::daemon::run(*opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twilld: error: {e}");
            ExitCode::FAILURE
        }
    }
}
