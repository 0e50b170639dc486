//! AFL++ harness of the `agent_messages` target (`jitgate_fuzz_targets::agent_messages`).
fn main() {
    afl::fuzz!(|data: &[u8]| jitgate_fuzz_targets::agent_messages(data));
}
