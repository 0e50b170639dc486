//! Real enforcement, end to end: `jitgate serve` and `jitgate agent` as real processes in network
//! namespaces the test creates, nftables programmed by the agent, probed with real TCP/UDP
//! connections between the namespaces. Needs root, `ip` and `nft`; skips with a printed reason
//! otherwise (`.ci/run` installs them and runs as root).
//!
//! Topology: namespace C holds the control plane and the clients (source A = 10.9.0.1, source
//! B = 10.9.0.3); namespace V is the VM with the agent (10.9.0.2) and echo listeners. In gateway
//! mode the agent runs on the gateway G (10.9.0.2, fd09::2) in front of the VM (10.8.0.2,
//! fd08::2); the dual-stack world gives C the IPv6 sources A6 = fd09::1 and B6 = fd09::3.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

#[macro_use]
mod world;

use serde_json::{json, Value};
use world::*;

#[test]
fn ports_close_open_for_exactly_the_source_and_close_again() {
    skip_unless_netns!("ports_close_open_for_exactly_the_source_and_close_again");
    let w = World::new(&[2222, 3333]);
    assert!(w.is_open(A, 2222), "before enabling: open");
    w.put_policy(json!([ssh_like(2222), ssh_like(3333)]));
    assert_eq!(w.probe(A, 2222, "closed", 5000)["reached"], true, "after enabling: closed");
    assert!(!w.is_open(B, 2222));
    assert!(!w.is_open(A, 3333));

    // Open for A only (through the CLI, waiting for the agent); the other protected port stays closed.
    let out = w.cli(&[
        "access", "request", "--vm", "vm1", "--port", "2222", "--source", A, "--for", "10m", "--wait", "-o", "json",
    ]);
    let granted: Value = serde_json::from_str(&out).expect("the request as JSON");
    assert!(w.is_open(A, 2222), "open for A right after initiate?wait=applied");
    assert!(!w.is_open(B, 2222), "still closed for B");
    assert!(!w.is_open(A, 3333), "other protected port still closed");

    // UDP on a '*' port follows the same grant.
    let udp =
        w.c.cmd(BIN).args(["probe", "udp", "--from", A, "--to", &format!("{VM}:2222")]).output().expect("udp probe");
    assert!(udp.status.success(), "UDP open for A: {}", String::from_utf8_lossy(&udp.stdout));
    let udp_b =
        w.c.cmd(BIN).args(["probe", "udp", "--from", B, "--to", &format!("{VM}:2222")]).output().expect("udp probe");
    assert!(!udp_b.status.success(), "UDP closed for B");

    // At endTimeUtc: closed again, within 100 ms.
    let short = w.initiate(B, 2222, "PT2S");
    assert!(w.is_open(B, 2222));
    let closed = w.probe(B, 2222, "closed", 5000);
    assert_eq!(closed["reached"], true, "{closed}");
    let late = closed["atUnixMs"].as_u64().unwrap_or(0) as i64 - end_ms(&short) as i64;
    assert!(late <= 100, "closed {late} ms after endTimeUtc");
    assert!(late >= -50, "closed {late} ms before endTimeUtc");

    // Revoke closes at once.
    let id = granted["id"].as_i64().expect("request id");
    let (status, b) = w.api("POST", &format!("/api/v1/requests/{id}/revoke?wait=applied"), None);
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["virtualMachines"][0]["ports"][0]["status"], "Revoked");
    assert!(!w.is_open(A, 2222), "closed right after revoke");

    // Editing the policy's ports updates what is protected.
    w.put_policy(json!([ssh_like(2222)]));
    assert_eq!(w.probe(B, 3333, "open", 5000)["reached"], true, "3333 left the policy: open again");
    assert!(!w.is_open(B, 2222), "2222 still protected");

    // Deleting the policy gives the ports back their pre-JIT state.
    let (status, _) = w.api("DELETE", &w.policy_path(), None);
    assert_eq!(status, 200);
    assert_eq!(w.probe(B, 2222, "open", 5000)["reached"], true, "open again after delete");
    assert!(w.is_open(B, 3333));
}

#[test]
fn grants_close_on_time_even_with_every_process_dead_and_survive_agent_restarts() {
    skip_unless_netns!("grants_close_on_time_even_with_every_process_dead_and_survive_agent_restarts");
    let mut w = World::new(&[2222]);
    w.put_policy(json!([ssh_like(2222)]));
    assert_eq!(w.probe(A, 2222, "closed", 5000)["reached"], true);

    // Agent restart mid-grant: the grant survives, nothing else opens.
    w.initiate(A, 2222, "PT10M");
    assert!(w.is_open(A, 2222));
    if let Some(mut a) = w.agent.take() {
        a.kill9();
    }
    // The table goes too, so that only the restarted agent can bring the grant back: without
    // jitgate's table the port is reachable from anywhere, until the agent restores it.
    let out = w.v.cmd("nft").args(["delete", "table", "inet", "jitgate"]).output().expect("nft runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(w.is_open(B, 2222), "with no table the port is unprotected");
    w.start_agent(None);
    w.wait_for(|w| !w.is_open(B, 2222));
    assert!(w.is_open(A, 2222), "the restarted agent brought the grant back");

    // kill -9 of agent and server while a grant is live: it still closes at its end time.
    let short = w.initiate(B, 2222, "PT3S");
    assert!(w.is_open(B, 2222));
    if let Some(mut a) = w.agent.take() {
        a.kill9();
    }
    // With the agent gone, waiting for enforcement ends in a clear timeout (the grant is recorded).
    let body = json!({"virtualMachines": [{"id": vm_id("rg", "vm1"), "ports": [
        {"number": 2222, "allowedSourceAddressPrefix": "10.9.0.99", "duration": "PT1M"}]}]});
    let path = w.policy_path().replace("?api-version", "/initiate?api-version") + "&wait=applied&timeout=0.5";
    let (status, b) = w.api("POST", &path, Some(&body));
    assert_eq!((status, b["error"]["code"].as_str()), (504, Some("EnforcementTimeout")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap_or("").contains("vm1"), "names the agent: {b}");
    if let Some(pid) = w.server.pid() {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let closed = w.probe(B, 2222, "closed", 8000);
    assert_eq!(closed["reached"], true, "{closed}");
    let late = closed["atUnixMs"].as_u64().unwrap_or(0) as i64 - end_ms(&short) as i64;
    assert!(late <= 100, "closed {late} ms after endTimeUtc with no jitgate process alive");
    assert!(w.is_open(A, 2222), "the longer grant is still open");
    let _ = unix_ms();
}

#[test]
fn cut_sessions_at_expiry_stops_live_connections_and_default_keeps_them() {
    skip_unless_netns!("cut_sessions_at_expiry_stops_live_connections_and_default_keeps_them");
    let w = World::new(&[2222, 3333]);
    let mut cut = ssh_like(3333);
    cut["cutSessionsAtExpiry"] = json!(true);
    w.put_policy(json!([ssh_like(2222), cut]));
    assert_eq!(w.probe(A, 2222, "closed", 5000)["reached"], true);
    let keep = w.initiate(A, 2222, "PT2S");
    let cutting = w.initiate(A, 3333, "PT2S");
    let session = |port: u16| {
        let mut cmd = w.c.cmd(BIN);
        cmd.args([
            "probe",
            "session",
            "--from",
            A,
            "--to",
            &format!("{VM}:{port}"),
            "--for-ms",
            "4000",
            "--interval-ms",
            "50",
        ]);
        std::thread::spawn(move || {
            cmd.output().map(|o| serde_json::from_slice::<Value>(&o.stdout).unwrap_or(Value::Null))
        })
    };
    let (kept, cutoff) = (session(2222), session(3333));
    let kept = kept.join().expect("join").expect("probe");
    let cutoff = cutoff.join().expect("join").expect("probe");
    assert_eq!(kept["connected"], true);
    assert!(kept["firstFailUnixMs"].is_null(), "the default keeps established sessions: {kept}");
    assert!(kept["lastOkUnixMs"].as_u64().unwrap_or(0) > end_ms(&keep) + 1000);
    let stopped = cutoff["firstFailUnixMs"].as_u64().expect("the cut session stopped");
    let after = stopped as i64 - end_ms(&cutting) as i64;
    assert!(after <= 1000, "cut {after} ms after expiry");
    assert!(cutoff["lastOkUnixMs"].as_u64().unwrap_or(0) <= end_ms(&cutting) + 100);
}

#[test]
fn gateway_mode_forwards_only_the_granted_source_through_the_mapped_port() {
    skip_unless_netns!("gateway_mode_forwards_only_the_granted_source_through_the_mapped_port");
    let w = World::new_gateway(&[2222]);
    let open_to = |from: &str, to: &str, port: u16| w.probe_to(from, to, port, "open", 0)["open"] == true;
    assert!(open_to(A, INNER, 2222), "before enabling: the VM is reachable through the gateway");
    let mut rule = ssh_like(2222);
    rule["mappedPort"] = json!(52222);
    w.put_policy(json!([rule]));
    assert_eq!(w.probe_to(A, INNER, 2222, "closed", 5000)["reached"], true, "after enabling: closed");
    assert!(!open_to(B, INNER, 2222));
    assert!(!open_to(A, VM, 52222), "no mapping before a grant");

    let granted = w.initiate(A, 2222, "PT10M");
    let vm = &granted["virtualMachines"][0];
    assert_eq!(vm["publicIpAddress"], VM, "connection details: the gateway's address: {granted}");
    assert_eq!(vm["ports"][0]["mappedPort"], 52222, "connection details: the mapped port");
    assert!(open_to(A, VM, 52222), "A reaches the VM through the mapped gateway port");
    assert!(open_to(A, INNER, 2222), "and directly through the gateway");
    assert!(!open_to(B, VM, 52222), "B does not, through the mapped port");
    assert!(!open_to(B, INNER, 2222), "nor directly");
    let history = w.api("GET", &w.policy_path(), None).1;
    assert_eq!(history["properties"]["requests"][0]["virtualMachines"][0]["ports"][0]["mappedPort"], 52222);

    let (status, _) = w.api("DELETE", &w.policy_path(), None);
    assert_eq!(status, 200);
    assert_eq!(w.probe_to(B, INNER, 2222, "open", 5000)["reached"], true, "pre-JIT state after delete");
}

#[test]
fn gateway_mode_forwards_ipv6_requesters_to_an_ipv6_vm_beside_ipv4() {
    skip_unless_netns!("gateway_mode_forwards_ipv6_requesters_to_an_ipv6_vm_beside_ipv4");
    let w = World::new_gateway_dual_stack(&[2222]);
    let open_to = |from: &str, to: &str, port: u16| w.probe_to(from, to, port, "open", 0)["open"] == true;
    // A second VM behind the same gateway, at the VM namespace's IPv6 address.
    let vm6 = json!({"id": vm_id("rg", "vm6"), "osType": "Linux", "location": "westeurope", "address": INNER6, "gateway": "gw1"});
    let (status, b) = w.api("PUT", "/api/v1/vms", Some(&vm6));
    assert_eq!(status, 201, "attach an IPv6 VM behind the gateway: {b}");
    assert!(open_to(A6, INNER6, 2222), "before enabling: the IPv6 VM is reachable through the gateway");

    // One policy for both: a mapped port for each (a gateway's public ports are its own).
    let rule = |mapped: u16| {
        let mut r = ssh_like(2222);
        r["mappedPort"] = json!(mapped);
        r
    };
    let policy = json!({"properties": {"virtualMachines": [
        {"id": vm_id("rg", "vm1"), "ports": [rule(52222)]},
        {"id": vm_id("rg", "vm6"), "ports": [rule(52223)]}]}});
    let (status, b) = w.api("PUT", &w.policy_path(), Some(&policy));
    assert_eq!(status, 200, "{b}");
    assert_eq!(w.probe_to(A6, INNER6, 2222, "closed", 5000)["reached"], true, "after enabling: closed over IPv6");
    assert!(!open_to(A6, GW6, 52223), "no mapping before a grant");

    // An IPv6 requester for the IPv4 VM: refused in words (the gateway has no NAT64).
    let initiate = |vm: &str, source: &str, duration: &str| {
        let body = json!({"virtualMachines": [{"id": vm_id("rg", vm), "ports": [
            {"number": 2222, "allowedSourceAddressPrefix": source, "duration": duration}]}]});
        let path = w.policy_path().replace("?api-version", "/initiate?api-version") + "&wait=applied";
        w.api("POST", &path, Some(&body))
    };
    let (status, refused) = initiate("vm1", A6, "PT10M");
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "InvalidInitiateInput", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap_or("").contains("no NAT64"), "{refused}");

    // The IPv6 grant: A6 reaches the VM's listener through gateway:52223 (DNAT to [fd08::2]:2222).
    let (status, granted) = initiate("vm6", A6, "PT10M");
    assert_eq!(status, 202, "{granted}");
    let vm = &granted["virtualMachines"][0];
    assert_eq!(vm["ports"][0]["mappedPort"], 52223, "connection details: the mapped port: {granted}");
    assert!(vm["publicIpAddress"].is_null(), "the gateway's public address is IPv4, of no use here: {granted}");
    assert!(open_to(A6, GW6, 52223), "A6 reaches the VM through the mapped gateway port");
    assert!(open_to(A6, INNER6, 2222), "and directly through the gateway");
    assert!(!open_to(B6, GW6, 52223), "B6, outside the granted range, does not");
    assert!(!open_to(B6, INNER6, 2222), "nor directly");

    // An IPv4 grant through the same gateway, alongside.
    let v4 = w.initiate(A, 2222, "PT10M");
    assert_eq!(v4["virtualMachines"][0]["publicIpAddress"], VM, "{v4}");
    assert!(open_to(A, VM, 52222), "IPv4 through the gateway");
    assert!(open_to(A6, GW6, 52223), "IPv6 still open");

    // Revoke the IPv6 grant: closed again; the IPv4 one carries on.
    let id = granted["id"].as_i64().expect("request id");
    let (status, b) = w.api("POST", &format!("/api/v1/requests/{id}/revoke?wait=applied"), None);
    assert_eq!(status, 200, "{b}");
    assert!(!open_to(A6, GW6, 52223), "closed right after revoke");
    assert!(!open_to(A6, INNER6, 2222), "routed path closed too");
    assert!(open_to(A, VM, 52222), "the IPv4 grant is untouched");

    // A range grant that expires: the kernel closes it.
    let (status, b) = initiate("vm6", "fd09::/64", "PT2S");
    assert_eq!(status, 202, "{b}");
    assert!(open_to(B6, GW6, 52223), "the /64 covers B6");
    assert_eq!(w.probe_to(B6, GW6, 52223, "closed", 5000)["reached"], true, "closed at expiry");
}

#[test]
fn an_agent_without_usable_nftables_makes_its_vm_unsupported() {
    skip_unless_netns!("an_agent_without_usable_nftables_makes_its_vm_unsupported");
    let w = World::new(&[2222]);
    let token = w.join_token("host");
    let dir = w.state_dir.with_file_name("agent-without-nft");
    // The agent's nft binary does not exist: it must say so rather than pretend to enforce.
    let mut cmd = w.v.cmd(BIN);
    cmd.env("JITGATE_NFT", "/nonexistent/nft");
    cmd.args([
        "agent",
        "--server",
        &w.server.url,
        "--join-token",
        token.trim(),
        "--vm-name",
        "vm2",
        "--poll-seconds",
        "5",
    ]);
    cmd.arg("--ca-cert").arg(&w.server.ca_cert).arg("--state-dir").arg(&dir);
    cmd.env("JITGATE_LOG", "error");
    let _agent = KillOnDrop::spawn(cmd).expect("agent");
    w.wait_for(|w| {
        w.api("GET", &format!("/api/v1/vms?id={}", vm_id("rg", "vm2")), None).1["unsupportedReason"].is_string()
    });
    let vm = w.api("GET", &format!("/api/v1/vms?id={}", vm_id("rg", "vm2")), None).1;
    let reason = vm["unsupportedReason"].as_str().unwrap_or("");
    assert!(reason.contains("nftables"), "{vm}");
    // Waiting for such an enforcement point fails at once, and says why.
    let policy = json!({"properties": {"virtualMachines": [{"id": vm_id("rg", "vm2"), "ports": [ssh_like(2222)]}]}});
    let path2 = w.policy_path().replace("/default?", "/second?");
    assert_eq!(w.api("PUT", &path2, Some(&policy)).0, 200);
    let body =
        json!({"virtualMachines": [{"id": vm_id("rg", "vm2"), "ports": [{"number": 2222, "duration": "PT1M"}]}]});
    let (status, b) =
        w.api("POST", &(path2.replace("?api-version", "/initiate?api-version") + "&wait=applied"), Some(&body));
    assert_eq!((status, b["error"]["code"].as_str()), (502, Some("EnforcementFailed")), "{b}");
}
