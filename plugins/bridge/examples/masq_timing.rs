//! Times twill-firewall's masquerade add/del as the bridge plugin calls them, in a throwaway namespace:
//! `cargo run --release -p twill-bridge --example masq_timing -- 20`.

use std::time::Instant;
use twill_firewall::masquerade::{self, Backend, Owner};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let ns = twill_kernel::NetNs::create_unnamed().expect("netns");
    ns.run(|| {
        for i in 0..n {
            let owner = Owner::new("timing", format!("c{i}"), "eth0");
            let addr: ipnet::IpNet = format!("10.66.{}.{}/16", i / 250, i % 250 + 2)
                .parse()
                .unwrap();
            let t = Instant::now();
            masquerade::add(Backend::Nftables, &owner, &[addr]).expect("add");
            let add = t.elapsed();
            let t = Instant::now();
            let check = masquerade::check(Backend::Nftables, &owner, &[addr]);
            let chk = t.elapsed();
            println!("add #{i}: {add:?}  check: {chk:?} ({})", check.is_ok());
        }
        for i in 0..n.min(5) {
            let owner = Owner::new("timing", format!("c{i}"), "eth0");
            let t = Instant::now();
            masquerade::del(Backend::Nftables, &owner).expect("del");
            println!("del #{i}: {:?}", t.elapsed());
        }
    })
    .expect("run in netns");
}
