//! AFL++ harness of the `arm_id` target (`jitgate_fuzz_targets::arm_id`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::arm_id(data));
}
