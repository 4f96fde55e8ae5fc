fn main() -> std::process::ExitCode {
    twill_cni::skel::run(&twill_bandwidth::Bandwidth, "CNI bandwidth plugin (twill)")
}
