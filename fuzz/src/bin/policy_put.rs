//! AFL++ harness of the `policy_put` target (`jitgate_fuzz_targets::policy_put`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::policy_put(data));
}
