//! Prints the kernel floor of one pod ADD (see `twill_kernel::floor`).
//! Usage: `cargo run --release -p twill-kernel --example kernel_floor -- [iterations]` (as root).

fn main() {
    let iterations = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    match twill_kernel::measure_kernel_floor(iterations) {
        Ok(r) => {
            println!(
                "kernel floor over {} iterations: min {:?} median {:?} p90 {:?}",
                r.samples.len(),
                r.min(),
                r.median(),
                r.p90()
            );
            for (i, step) in twill_kernel::FloorReport::STEPS.iter().enumerate() {
                println!("  {step}: median {:?}", r.step_median(i));
            }
        }
        Err(e) => {
            eprintln!("kernel_floor: {e}");
            std::process::exit(1);
        }
    }
}
