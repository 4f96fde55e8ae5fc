//! Test harness shared by twill's integration, conformance and end-to-end tests, and by the benchmarks:
//! real network namespaces, plugins exec'd the way runtimes do, the real libcni driver, and a real etcd.

pub mod bins;
pub mod cluster;
pub mod dual_stack;
pub mod e2e;
pub mod etcd;
pub mod exec;
pub mod flanneld;
pub mod hand_wired;
pub mod kube;
pub mod leases;
pub mod libcni;
pub mod mixed;
pub mod netns;
pub mod overlay_bench;
pub mod pinger;
pub mod pki;
pub mod rng;
pub mod runtimes;
