//! AFL++ harness of the `prefix` target (`jitgate_fuzz_targets::prefix`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::prefix(data));
}
