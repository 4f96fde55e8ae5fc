//! Times `masquerade::add` / `masquerade::del` on both backends against doing the same with the
//! `nft` command (what a plugin exec'ing `nft -f` pays). Runs in a private network namespace it
//! creates with `unshare(CLONE_NEWNET)`, so nothing outlives it. Root only.
//!
//!     cargo run --release -p twill-firewall --example masq_timing -- [iterations] [background owners]
//!     masq_timing once add|del nftables|iptables <n>   (one operation in the current netns)

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use twill_firewall::masquerade::{self, Backend, Owner};

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<44} n={:<4} median {:>8.0} µs   p90 {:>8.0} µs   min {:>8.0} µs",
        v.len(),
        us(p(0.5)),
        us(p(0.9)),
        us(v[0])
    );
}

fn addrs(i: u32) -> [IpNet; 2] {
    [
        format!(
            "10.{}.{}.{}/16",
            100 + i / 60000,
            (i / 250) % 250,
            i % 250 + 2
        )
        .parse()
        .expect("valid address"),
        format!("fd00:100::{:x}/64", i + 2)
            .parse()
            .expect("valid address"),
    ]
}

fn nft(input: &str) -> String {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write nft input");
    let out = child.wait_with_output().expect("wait nft");
    assert!(
        out.status.success(),
        "nft -f failed: {}\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_cmd(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `once <add|del> <backend> <i>`: one operation in the current namespace, then exit — what an
/// exec'd plugin pays end to end, including closing the netlink socket at exit.
fn once(mut args: impl Iterator<Item = String>) {
    let op = args.next().expect("add or del");
    let backend: Backend = args.next().expect("backend").parse().expect("backend");
    let i: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let o = Owner::new("bench", format!("once{i}"), "eth0");
    match op.as_str() {
        "add" => masquerade::add(backend, &o, &addrs(i)).expect("add"),
        "del" => masquerade::del(backend, &o).expect("del"),
        other => panic!("unknown operation {other}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("once") {
        args.next();
        return once(args);
    }
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let background: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    // Single-threaded at this point: the whole process moves into a new namespace.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        panic!("unshare(CLONE_NEWNET): {e}");
    }
    println!("{n} iterations, {background} other owners present");

    for backend in [Backend::Nftables, Backend::Iptables] {
        for i in 0..background {
            let o = Owner::new("bench", format!("bg{i}"), "eth0");
            masquerade::add(backend, &o, &addrs(10_000 + i)).expect("background add");
        }
        let (mut add, mut del, mut del_close) = (Vec::new(), Vec::new(), Vec::new());
        let iters = if backend == Backend::Iptables {
            n.min(50)
        } else {
            n
        };
        for i in 0..iters {
            let o = Owner::new("bench", format!("c{i}"), "eth0");
            let a = addrs(i);
            let t = Instant::now();
            masquerade::add(backend, &o, &a).expect("add");
            add.push(t.elapsed());
            let t = Instant::now();
            masquerade::del(backend, &o).expect("del");
            del.push(t.elapsed());
            // What a plugin exiting right after DEL would wait for at exit (see `Nft`).
            twill_firewall::nft::close_parked_sockets();
            del_close.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(2));
        }
        stats(&format!("twill {backend} masquerade::add (v4+v6)"), add);
        stats(&format!("twill {backend} masquerade::del"), del);
        stats(
            &format!("twill {backend} del + immediate socket close"),
            del_close,
        );
        masquerade::gc(backend, "bench", &[] as &[(&str, &str)]).expect("gc");
    }

    // The same work through the nft command: ADD as one `nft -f`, DEL as a listing with handles
    // plus one `nft -f` deleting them (what a go-nft/`nft`-exec backend does).
    for i in 0..background {
        let o = Owner::new("bench", format!("bg{i}"), "eth0");
        masquerade::add(Backend::Nftables, &o, &addrs(10_000 + i)).expect("background add");
    }
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for i in 0..n.min(100) {
        let a = addrs(i);
        let comment = format!("nftexec-{i}");
        let input = format!(
            "add table inet cni_plugins_masquerade\n\
             add chain inet cni_plugins_masquerade postrouting {{ type nat hook postrouting priority srcnat; }}\n\
             add chain inet cni_plugins_masquerade masq_checks\n\
             flush chain inet cni_plugins_masquerade postrouting\n\
             add rule inet cni_plugins_masquerade postrouting ip daddr 224.0.0.0/4 return\n\
             add rule inet cni_plugins_masquerade postrouting ip6 daddr ff00::/8 return\n\
             add rule inet cni_plugins_masquerade postrouting goto masq_checks\n\
             add rule inet cni_plugins_masquerade masq_checks ip saddr {} ip daddr != {} masquerade comment \"{comment}\"\n\
             add rule inet cni_plugins_masquerade masq_checks ip6 saddr {} ip6 daddr != {} masquerade comment \"{comment}\"\n",
            a[0].addr(),
            a[0].trunc(),
            a[1].addr(),
            a[1].trunc()
        );
        let t = Instant::now();
        nft(&input);
        add.push(t.elapsed());
        let t = Instant::now();
        let listing = nft_cmd(&[
            "-a",
            "list",
            "chain",
            "inet",
            "cni_plugins_masquerade",
            "masq_checks",
        ]);
        let mut deletes = String::new();
        for line in listing
            .lines()
            .filter(|l| l.contains(&format!("\"{comment}\"")))
        {
            let handle = line.rsplit("# handle ").next().expect("handle").trim();
            deletes.push_str(&format!(
                "delete rule inet cni_plugins_masquerade masq_checks handle {handle}\n"
            ));
        }
        nft(&deletes);
        del.push(t.elapsed());
    }
    stats("nft -f exec: add (1 exec)", add);
    stats("nft exec: del (list -a + nft -f, 2 execs)", del);
}
