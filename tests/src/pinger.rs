//! A `ping` at a fixed interval running in the background while a cluster changes (a daemon switch, a
//! restart), telling which echo requests went unanswered and so the longest outage a pod saw.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::netns::Netns;

/// A `ping` at a fixed interval from a pod to an address, running until [`Pinger::finish`]; tells which
/// echo requests went unanswered and so the longest outage.
pub struct Pinger {
    child: Option<Child>,
    interval: Duration,
}

/// What a [`Pinger`] saw.
#[derive(Debug, Clone)]
pub struct PingReport {
    pub sent: u32,
    pub received: u32,
    /// Longest run of consecutive unanswered requests.
    pub longest_loss: u32,
    pub interval: Duration,
}

impl PingReport {
    /// The longest time without an answer: consecutive losses times the interval.
    pub fn longest_outage(&self) -> Duration {
        self.interval * self.longest_loss
    }
}

impl Pinger {
    pub fn start(from: &Netns, to: Ipv4Addr, interval: Duration) -> Pinger {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", from.name()]);
        Self::start_in(cmd, to, interval)
    }

    /// Like `start`, with `ping` appended to `enter`, a command that enters the pod and execs its
    /// arguments (e.g. `nsenter --net=<path>`), so SIGINT reaches ping itself.
    pub fn start_in(mut enter: Command, to: Ipv4Addr, interval: Duration) -> Pinger {
        let child = enter
            .args(["ping", "-n", "-i"])
            .arg(format!("{:.3}", interval.as_secs_f64()))
            .args(["-W", "1"])
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting ping: {e}"));
        Pinger {
            child: Some(child),
            interval,
        }
    }

    /// SIGINT (ping prints its summary) and the report.
    pub fn finish(mut self) -> PingReport {
        let child = self
            .child
            .take()
            .unwrap_or_else(|| unreachable!("finish called twice"));
        // SAFETY: kill(2) on our own child (`ip netns exec` execs ping, so this is ping's pid).
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for ping: {e}"));
        parse_ping_lines(&String::from_utf8_lossy(&out.stdout), self.interval)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads `ping -n` output: one `icmp_seq=N` per answer, then "S packets transmitted, R received".
fn parse_ping_lines(text: &str, interval: Duration) -> PingReport {
    let mut answered = std::collections::BTreeSet::new();
    let mut sent = 0;
    for line in text.lines() {
        if let Some(seq) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<u32>().ok())
        {
            if line.contains("bytes from") {
                answered.insert(seq);
            }
        }
        if let Some((s, _)) = line.split_once(" packets transmitted") {
            sent = s.trim().parse().unwrap_or(0);
        }
    }
    // Sequence numbers start at 1; count the unanswered runs among 1..=sent.
    let (mut longest, mut run) = (0, 0);
    for seq in 1..=sent {
        if answered.contains(&seq) {
            run = 0;
        } else {
            run += 1;
            longest = longest.max(run);
        }
    }
    PingReport {
        sent,
        received: answered.len() as u32,
        longest_loss: longest,
        interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_gives_the_longest_run_of_losses() {
        let text = "PING 10.244.1.2 (10.244.1.2) 56(84) bytes of data.\n\
            64 bytes from 10.244.1.2: icmp_seq=1 ttl=62 time=0.1 ms\n\
            64 bytes from 10.244.1.2: icmp_seq=4 ttl=62 time=0.1 ms\n\
            64 bytes from 10.244.1.2: icmp_seq=5 ttl=62 time=0.1 ms\n\n\
            --- 10.244.1.2 ping statistics ---\n\
            7 packets transmitted, 3 received, 57% packet loss, time 600ms\n";
        let r = parse_ping_lines(text, Duration::from_millis(100));
        assert_eq!((r.sent, r.received, r.longest_loss), (7, 3, 2));
        assert_eq!(r.longest_outage(), Duration::from_millis(200));
    }
}
