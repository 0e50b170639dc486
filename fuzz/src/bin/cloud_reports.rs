//! AFL++ harness of the `cloud_reports` target (`jitgate_fuzz_targets::cloud_reports`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::cloud_reports(data));
}
