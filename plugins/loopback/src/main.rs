fn main() -> std::process::ExitCode {
    twill_cni::skel::run(&twill_loopback::Loopback, "CNI loopback plugin (twill)")
}
