fn main() -> std::process::ExitCode {
    twill_cni::skel::run(
        &twill_firewall_plugin::Firewall,
        "CNI firewall plugin (twill)",
    )
}
