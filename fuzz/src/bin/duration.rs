//! AFL++ harness of the `duration` target (`jitgate_fuzz_targets::duration`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::duration(data));
}
