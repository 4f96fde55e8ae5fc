use twill_kernel::measure_kernel_floor;

#[test]
fn kernel_floor_measures_every_iteration() {
    let report = measure_kernel_floor(5).unwrap();
    assert_eq!(report.samples.len(), 5);
    assert!(report.min() > std::time::Duration::ZERO);
    assert!(report.min() <= report.median() && report.median() <= report.p90());
    eprintln!(
        "kernel floor (debug build): min {:?} median {:?} p90 {:?}",
        report.min(),
        report.median(),
        report.p90()
    );
}
