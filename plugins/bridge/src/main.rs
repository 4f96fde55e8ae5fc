//! The `bridge` CNI plugin binary: a thin main over the library.
//!
//! `no_main`: a plugin process lives a few milliseconds, and Rust's runtime start-up (reading
//! `/proc/self/maps` to find the main thread's stack guard, an alternate signal stack and SIGSEGV/SIGBUS
//! handlers for stack-overflow messages, polling fds 0-2) is work every ADD and DEL would pay for nothing.
//! glibc still runs every constructor, and `std::env` and `std::process::exit` (which flushes stdout) work
//! as usual. SIGPIPE stays at its default, which only matters if the runtime closed our stdout.
// Test builds keep libtest's generated main.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
use std::process::ExitCode;

#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    let code = twill_cni::skel::run(&twill_bridge::Bridge, "CNI bridge plugin (twill)");
    // skel::run answers SUCCESS or 1; `exit` (not a return to libc) runs std's cleanup, which flushes stdout.
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
}
