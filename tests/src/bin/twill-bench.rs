//! `twill-bench`: runs named benchmark scenarios (ours vs the reference plugin builds) and prints a
//! table per scenario. Called by `scripts/bench.sh`, which builds release binaries first.
//!
//! Usage: twill-bench [--rounds N] [--warmup N] [--ours DIR] [--reference DIR]... [--pods N,N,..]
//!                    <scenario>...
//!
//! Without `--reference`, every scenario compares with the current upstream release (built from
//! `tests/upstream/plugins`) and Debian's 1.1.1 in `/usr/lib/cni`, in that order; each
//! `--reference DIR` replaces that list (repeat it for several).
//!        twill-bench --list

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::process::ExitCode;

use bench::{scenarios, Options, RefBuild};
use twill_tests::bins::{bin_dir, require_root, Reference};

fn usage() -> String {
    let mut text = String::from(
        "usage: twill-bench [--rounds N] [--warmup N] [--ours DIR] [--reference DIR]... [--pods N,N,..]\n\
         \x20                  <scenario>...\n\
         \x20      twill-bench --list\n\nscenarios:\n",
    );
    for s in scenarios() {
        text.push_str(&format!("  {:<12} {}\n", s.name, s.about));
    }
    text
}

fn main() -> ExitCode {
    let mut options = Options {
        rounds: 200,
        warmup: 10,
        ours: bin_dir(),
        references: Vec::new(),
        rounds_given: false,
        warmup_given: false,
        pods: None,
    };
    let mut wanted = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        let parsed: Result<(), String> = match arg.as_str() {
            "--list" | "-l" => {
                for s in scenarios() {
                    println!("{}", s.name);
                }
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                print!("{}", usage());
                return ExitCode::SUCCESS;
            }
            "--rounds" => value("--rounds")
                .and_then(|v| v.parse().map_err(|e| format!("--rounds {v}: {e}")))
                .map(|n| {
                    options.rounds = n;
                    options.rounds_given = true;
                }),
            "--warmup" => value("--warmup")
                .and_then(|v| v.parse().map_err(|e| format!("--warmup {v}: {e}")))
                .map(|n| {
                    options.warmup = n;
                    options.warmup_given = true;
                }),
            "--pods" => value("--pods").and_then(|v| {
                v.split(',')
                    .map(|p| {
                        p.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--pods {v}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(|list| options.pods = Some(list))
            }),
            "--ours" => value("--ours").map(|v| options.ours = PathBuf::from(v)),
            "--reference" => value("--reference").map(|v| {
                options.references.push(RefBuild {
                    label: format!("reference {v}"),
                    dir: PathBuf::from(v),
                })
            }),
            s if s.starts_with('-') => Err(format!("unknown option {s}")),
            s => {
                wanted.push(s.to_string());
                Ok(())
            }
        };
        if let Err(e) = parsed {
            eprint!("twill-bench: {e}\n\n{}", usage());
            return ExitCode::from(2);
        }
    }
    if options.rounds == 0 {
        eprintln!("twill-bench: --rounds must be at least 1");
        return ExitCode::from(2);
    }
    if wanted.is_empty() {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let all = scenarios();
    let mut chosen = Vec::new();
    for name in &wanted {
        match all.iter().find(|s| s.name == name) {
            Some(s) => chosen.push(s),
            None => {
                eprint!("twill-bench: unknown scenario {name}\n\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    require_root();
    if options.references.is_empty() {
        // Current first: the headline ratio is against what users run today.
        for reference in [Reference::Current, Reference::Debian] {
            options.references.push(RefBuild {
                label: short_label(reference).into(),
                dir: reference.dir(),
            });
        }
    }
    println!(
        "ours: {}  rounds: {} (+{} warm-up, interleaved){}",
        options.ours.display(),
        options.rounds,
        options.warmup,
        if options.rounds_given {
            ""
        } else {
            " unless the scenario has its own default"
        }
    );
    for reference in &options.references {
        println!("{}: {}", reference.label, reference.dir.display());
    }
    for scenario in chosen {
        let report = (scenario.run)(&options);
        println!("\n{}", report.render());
    }
    ExitCode::SUCCESS
}

/// Row label of a default reference build.
fn short_label(reference: Reference) -> &'static str {
    match reference {
        Reference::Current => "ref v1.10.0",
        Reference::Debian => "ref 1.1.1 (Debian)",
    }
}
