//! AFL++ harness of the `role_definition` target (`jitgate_fuzz_targets::role_definition`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::role_definition(data));
}
