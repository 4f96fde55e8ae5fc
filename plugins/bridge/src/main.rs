//! The `bridge` CNI plugin binary: a thin main over the library.

fn main() -> std::process::ExitCode {
    twill_cni::skel::run(&twill_bridge::Bridge, "CNI bridge plugin (twill)")
}
