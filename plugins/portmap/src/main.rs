fn main() -> std::process::ExitCode {
    twill_cni::skel::run(&twill_portmap::Portmap, "CNI portmap plugin (twill)")
}
