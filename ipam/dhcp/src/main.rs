//! The `dhcp` binary: `dhcp daemon [flags]` runs the daemon; anything else is the CNI plugin, which stays
//! single-threaded and short-lived.
//!
//! `no_main`, as the other plugins: a process that lives a few milliseconds skips Rust's runtime start-up
//! (reading `/proc/self/maps` for the main thread's stack guard, signal handlers and an alternate stack for
//! stack-overflow messages, polling fds 0-2). `std::process::exit` still runs std's cleanup (stdout flush).
// Test builds keep libtest's generated main.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
use std::process::ExitCode;

#[cfg(not(test))]
/// # Safety
/// Called by the C runtime only, with its `argc` and `argv`.
#[no_mangle]
pub unsafe extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // From main's own arguments: without Rust's `main`, `std::env::args()` is empty under musl (the static
    // release build); only glibc hands the arguments to std before `main`.
    let args: Vec<String> = (1..usize::try_from(argc).unwrap_or(0))
        // SAFETY: the C runtime passes `argc` valid, NUL-terminated strings in `argv`.
        .map(|i| unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) })
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.first().map(String::as_str) == Some("daemon") {
        std::process::exit(twill_dhcp::daemon::main(&args[1..]));
    }
    let code = twill_cni::skel::run(&twill_dhcp::Dhcp, "CNI dhcp plugin (twill)");
    // skel::run answers SUCCESS or 1.
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
}
