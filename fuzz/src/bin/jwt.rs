//! AFL++ harness of the `jwt` target (`jitgate_fuzz_targets::jwt`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::jwt(data));
}
