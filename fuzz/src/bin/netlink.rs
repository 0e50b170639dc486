//! AFL++ harness of the `netlink` target (`jitgate_fuzz_targets::netlink`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::netlink(data));
}
