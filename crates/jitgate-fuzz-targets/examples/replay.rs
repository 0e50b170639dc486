//! Runs one target over the given files, timing each, in an ordinary build (a crash then shows
//! its backtrace): `cargo run -p jitgate-fuzz-targets --example replay -- netlink fuzz/out/netlink/default/hangs/*`.

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let Some(target) = jitgate_fuzz_targets::target(&name) else {
        let names: Vec<&str> = jitgate_fuzz_targets::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: replay TARGET FILE...; targets: {}", names.join(", "));
        std::process::exit(2);
    };
    for file in args {
        let data = match std::fs::read(&file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{file}: {e}");
                std::process::exit(1);
            }
        };
        let start = std::time::Instant::now();
        target(&data);
        println!("{file}: {} bytes, {:?}", data.len(), start.elapsed());
    }
}
