//! AFL++ harness of the `initiate` target (`jitgate_fuzz_targets::initiate`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::initiate(data));
}
