//! Link the unwinder statically into a plugin's binaries (what `gcc -static-libgcc` does). The build script
//! of every package that names it in `build =` (`bridge`, `host-local`).
//!
//! A plugin is a short-lived process and its start-up is part of every ADD and DEL: `libgcc_s.so.1` costs an
//! extra object to map and relocate, and its constructor (`__cpu_indicator_init`) executes CPUID several
//! times, each a VM exit on a virtual machine (~0.1 ms per exec measured here). Rust's `std` asks for
//! `-lgcc_s` (its unwinder); a linker script of that name in a directory searched first resolves it to the
//! static `libgcc_eh.a` instead. Only this package's binaries are affected (`rustc-link-arg-bins`, and GNU ld
//! applies every `-L` to every `-l` regardless of order), never crates that depend on the library.

use std::path::PathBuf;

fn main() {
    // The output is constant: run once (a change to this file rebuilds and reruns the script anyway).
    println!("cargo:rerun-if-changed=Cargo.toml");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("static-libgcc");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/static-libgcc");
    std::fs::write(dir.join("libgcc_s.so"), "INPUT(-lgcc_eh)\n").expect("write linker script");
    println!("cargo:rustc-link-arg-bins=-L{}", dir.display());
}
