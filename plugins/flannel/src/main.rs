//! The `flannel` CNI plugin binary: everything is in the library.

fn main() -> std::process::ExitCode {
    twill_cni::skel::run(&twill_flannel::Flannel, "CNI flannel meta plugin (twill)")
}
