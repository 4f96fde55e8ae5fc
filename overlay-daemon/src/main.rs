//! `twilld`: thin entry point; see the library for the parts.

use std::process::ExitCode;

use twilld::error::Error;
use twilld::flags::{self, Parsed};
use twilld::logging::{self, LogFormat, LogLevel};

fn main() -> ExitCode {
    let opts = match flags::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{}", flags::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("{}", flags::version_line());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // The flags that choose the log format are what failed: report in the default one, then the usage.
            logging::init(LogLevel::default(), LogFormat::Text);
            return fail(Error::from(e));
        }
    };
    logging::init(opts.log_level, opts.log_format);
    // One thread is plenty for a control plane and keeps RSS small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(Error::Runtime(e)),
    };
    match rt.block_on(twilld::daemon::run(*opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Logs why twilld stops and exits with the error's code.
fn fail(e: Error) -> ExitCode {
    tracing::error!("{e}");
    if let Error::Flags(_) = e {
        eprint!("{}", flags::USAGE);
    }
    ExitCode::from(e.exit_code())
}
