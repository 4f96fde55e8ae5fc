fn main() -> std::process::ExitCode {
    twill_cni::skel::run(
        &twill_ipam::HostLocal,
        "CNI host-local IPAM plugin (twill): round-robin leases in <dataDir>/<network>, shared with the reference",
    )
}
