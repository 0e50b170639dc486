//! The service units and the Debian package of `packaging/`: `systemd-analyze verify` (and its
//! offline security score) on both units, the package built with `cargo deb` from the binary
//! this test run built (no second build: `packaging/deb.sh --no-build` in a scratch target
//! directory), unpacked with `dpkg -x` and described by `dpkg-deb -I`. Needs `systemd-analyze`
//! (package `systemd`) and `cargo deb` (`cargo install cargo-deb --locked`); skips without them
//! except under `CI=true`, where `.ci/run` installs them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn packaging(rel: &str) -> PathBuf {
    repo().join("packaging").join(rel)
}

fn have(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The unit with its ExecStart pointing at this build's binary (verify checks that it exists).
fn unit_copy(name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(packaging(&format!("systemd/{name}"))).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/jitgate "), "{name} starts /usr/bin/jitgate");
    let path = dir.join(name);
    std::fs::write(&path, text.replace("ExecStart=/usr/bin/jitgate ", &format!("ExecStart={BIN} "))).unwrap();
    path
}

/// `Key=value` lines of a unit, in order.
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn value<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

#[test]
fn the_units_pass_systemd_analyze_verify_and_keep_their_hardening() {
    if !have("systemd-analyze", &["--version"]) {
        jitgate_netns::skip(
            "the_units_pass_systemd_analyze_verify_and_keep_their_hardening",
            "needs systemd-analyze (apt-get install systemd)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serve = unit_copy("jitgate.service", dir.path());
    let agent = unit_copy("jitgate-agent.service", dir.path());
    // The man pages are installed by the package, not here: --man=no.
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&serve).arg(&agent).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify failed: {said}");
    // A value systemd cannot parse is only a warning for verify: any message is a failure here.
    assert_eq!(said.trim(), "", "systemd-analyze verify has something to say");

    // The same tool finds a broken unit (so the check above can fail).
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&serve).unwrap().replace("NoNewPrivileges=yes", "NoNewPrivileges=maybe"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&broken).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("broken.service") && said.contains("maybe"), "a bad value is reported: {said}");

    // systemd's own exposure score (0 = locked down, 10 = unprotected).
    for unit in [&serve, &agent] {
        let out = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(unit).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in: {text}"));
        assert!(score <= 2.0, "{} exposure {score}: {text}", unit.display());
    }

    let serve = directives(&std::fs::read_to_string(packaging("systemd/jitgate.service")).unwrap());
    assert_eq!(value(&serve, "ExecStart"), ["/usr/bin/jitgate serve --config /etc/jitgate/jitgate.toml"]);
    assert_eq!(value(&serve, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(value(&serve, "User"), ["jitgate"]);
    assert_eq!(value(&serve, "StateDirectory"), ["jitgate"]);
    assert_eq!(value(&serve, "CapabilityBoundingSet"), [""], "serve keeps no capability");
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallFilter", "@system-service"),
    ] {
        assert!(value(&serve, key).contains(&want), "jitgate.service: {key}={want}");
    }
    let agent = directives(&std::fs::read_to_string(packaging("systemd/jitgate-agent.service")).unwrap());
    assert_eq!(value(&agent, "ExecStart"), ["/usr/bin/jitgate agent --config /etc/jitgate/agent.toml"]);
    assert_eq!(value(&agent, "CapabilityBoundingSet"), ["CAP_NET_ADMIN"]);
    assert_eq!(value(&agent, "AmbientCapabilities"), ["CAP_NET_ADMIN"]);
    assert_eq!(value(&agent, "RestrictAddressFamilies"), ["AF_INET AF_INET6 AF_NETLINK AF_UNIX"]);
    assert_eq!(value(&agent, "StateDirectory"), ["jitgate-agent"]);
    assert_eq!(value(&agent, "NoNewPrivileges"), ["yes"]);
}

/// Every key of a packaged settings file — set, or commented out as an example — is a long flag
/// of the command that reads it (with `-` written `_`).
#[test]
fn the_packaged_settings_name_only_flags_of_their_command() {
    let cli = jitgate_cli::Cli::command();
    for (file, command) in [("jitgate.toml", "serve"), ("agent.toml", "agent")] {
        let text = std::fs::read_to_string(packaging(&format!("etc/{file}"))).unwrap();
        let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{file} is not TOML: {e}"));
        let sub = cli.find_subcommand(command).unwrap();
        let flags: Vec<String> =
            sub.get_arguments().filter_map(|a| a.get_long()).map(|l| l.replace('-', "_")).collect();
        let commented = text.lines().filter_map(|l| l.strip_prefix("# ")).filter_map(|l| {
            let (k, v) = l.split_once(" = ")?;
            (k.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !v.is_empty()).then(|| k.to_owned())
        });
        let keys: Vec<String> = table.keys().cloned().chain(commented).collect();
        assert!(keys.len() >= 4, "{file}: {keys:?}");
        for key in &keys {
            assert!(flags.contains(key), "{file}: `{key}` is no flag of jitgate {command} ({flags:?})");
        }
        // Each commented example parses as TOML once uncommented.
        for line in text.lines().filter_map(|l| l.strip_prefix("# ")).filter(|l| l.contains(" = ")) {
            if keys.iter().any(|k| line.starts_with(&format!("{k} = "))) {
                line.parse::<toml::Table>().unwrap_or_else(|e| panic!("{file}: `{line}`: {e}"));
            }
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

#[test]
fn the_package_builds_from_this_binary_and_installs_the_expected_files() {
    if !have(&cargo(), &["deb", "--version"]) {
        jitgate_netns::skip(
            "the_package_builds_from_this_binary_and_installs_the_expected_files",
            "needs cargo-deb (cargo install cargo-deb --locked)",
        );
        return;
    }
    // A scratch target directory whose release/ holds this run's binary: the package is made
    // from it without building anything again.
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(BIN, target.join("release/jitgate")).unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    run(Command::new("bash")
        .arg(packaging("deb.sh"))
        .args(["--no-build", "--fast", "--output"])
        .arg(&out_dir)
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO", cargo()));
    let debs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let deb = &debs[0];
    assert!(deb.file_name().unwrap().to_string_lossy().starts_with("jitgate_"), "{}", deb.display());

    // What dpkg is told: dependencies, conffiles, maintainer scripts.
    let info = run(Command::new("dpkg-deb").arg("-I").arg(deb));
    let depends = info.lines().find_map(|l| l.trim().strip_prefix("Depends: ")).unwrap_or_default();
    for dep in ["libc6", "nftables", "iproute2", "systemd | systemd-standalone-sysusers"] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), ["/etc/jitgate/jitgate.toml", "/etc/jitgate/agent.toml"]);
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("systemd-sysusers") && postinst.contains("jitgate.conf"), "the user: {postinst}");
    assert!(postinst.contains("deb-systemd-helper update-state jitgate.service"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper update-state jitgate-agent.service"), "{postinst}");
    assert!(postinst.contains("try-restart jitgate.service"), "an upgrade restarts a running server");
    assert!(!postinst.contains("_dh_action=start"), "nothing is started by an install: {postinst}");
    assert!(!postinst.contains("#DEBHELPER#"), "the snippets were put in");
    assert!(postinst.find("systemd-sysusers").unwrap() < postinst.find("chown root:jitgate").unwrap(), "user first");
    let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
    assert!(postrm.contains("deb-systemd-helper purge jitgate.service"), "{postrm}");
    for script in ["postinst", "postrm", "prerm"] {
        assert_eq!(mode(&control.join(script)) & 0o111, 0o111, "{script} is executable");
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }

    // What it installs, with which modes.
    let root = tmp.path().join("root");
    run(Command::new("dpkg").arg("-x").arg(deb).arg(&root));
    let expect = [
        ("usr/bin/jitgate", 0o755),
        ("etc/jitgate/jitgate.toml", 0o640),
        ("etc/jitgate/agent.toml", 0o640),
        ("usr/lib/systemd/system/jitgate.service", 0o644),
        ("usr/lib/systemd/system/jitgate-agent.service", 0o644),
        ("usr/lib/sysusers.d/jitgate.conf", 0o644),
        ("usr/share/man/man1/jitgate.1.gz", 0o644),
        ("usr/share/man/man1/jitgate-serve.1.gz", 0o644),
        ("usr/share/man/man1/jitgate-agent.1.gz", 0o644),
        ("usr/share/man/man1/jitgate-doctor.1.gz", 0o644),
        ("usr/share/bash-completion/completions/jitgate", 0o644),
        ("usr/share/zsh/vendor-completions/_jitgate", 0o644),
        ("usr/share/fish/vendor_completions.d/jitgate.fish", 0o644),
        ("usr/share/doc/jitgate/copyright", 0o644),
    ];
    for (path, want) in expect {
        assert_eq!(mode(&root.join(path)), want, "{path}");
    }
    for (packaged, source) in [
        ("usr/lib/systemd/system/jitgate.service", "systemd/jitgate.service"),
        ("usr/lib/systemd/system/jitgate-agent.service", "systemd/jitgate-agent.service"),
        ("etc/jitgate/jitgate.toml", "etc/jitgate.toml"),
        ("etc/jitgate/agent.toml", "etc/agent.toml"),
    ] {
        assert_eq!(
            std::fs::read(root.join(packaged)).unwrap(),
            std::fs::read(packaging(source)).unwrap(),
            "{packaged}"
        );
    }
    let sysusers = std::fs::read_to_string(root.join("usr/lib/sysusers.d/jitgate.conf")).unwrap();
    assert!(sysusers.starts_with("u jitgate "), "{sysusers}");
    // The installed binary runs, and its completions know its commands.
    let version = run(Command::new(root.join("usr/bin/jitgate")).arg("--version"));
    assert!(version.starts_with("jitgate "), "{version}");
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/jitgate")).unwrap();
    assert!(bash.contains("doctor") && bash.contains("serve"), "bash completions");
    // Man pages are gzip'd roff.
    let page = run(Command::new("gzip").arg("-dc").arg(root.join("usr/share/man/man1/jitgate-doctor.1.gz")));
    assert!(page.contains(".TH jitgate-doctor"), "{}", &page[..page.len().min(200)]);
}
