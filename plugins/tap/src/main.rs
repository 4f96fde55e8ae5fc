//! The `tap` CNI plugin binary: a thin main over the library.
//!
//! `no_main` for the same reason as the bridge's: a plugin process lives a few milliseconds and Rust's
//! runtime start-up (stack guard discovery, signal stacks, fd polling) would be paid on every verb.
// Test builds keep libtest's generated main.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
use std::process::ExitCode;

#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    let code = twill_cni::skel::run(&twill_tap::Tap, "CNI tap plugin (twill)");
    // `exit` (not a return to libc) runs std's cleanup, which flushes stdout.
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
}
