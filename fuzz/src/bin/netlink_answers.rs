//! AFL++ harness of the `netlink_answers` target (`jitgate_fuzz_targets::netlink_answers`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::netlink_answers(data));
}
