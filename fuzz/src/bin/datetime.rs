//! AFL++ harness of the `datetime` target (`jitgate_fuzz_targets::datetime`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::datetime(data));
}
