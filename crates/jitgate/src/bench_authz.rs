//! `jitgate bench authz`: what authorization adds to a request when the caller holds many role
//! assignments — the cached lookup of the caller's grants plus the evaluation, with the real
//! store and the real cache.

use std::sync::Arc;
use std::time::Instant;

use jitgate_cli::bench::AuthzArgs;
use jitgate_core::audit::{AuditEvent, AuditStatus};
use jitgate_core::rbac::{actions, RoleDefinition};
use jitgate_server::authz::Authz;
use jitgate_store::Store;
use jitgate_store_sqlite::SqliteStore;

use crate::bench_portal::event;

pub async fn run(args: AuthzArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("bench.db"), bench_keys()?).map_err(|e| anyhow::anyhow!("{e}"))?);
    let principal = store.create_principal("bench", "User", event("bench")).await?;
    // Custom roles with several patterns each, assigned at many resource-group scopes; the one
    // assignment that allows the checked action is the last.
    for r in 0..10 {
        let role = RoleDefinition {
            name: format!("role{r}"),
            id: format!("r{r}"),
            description: String::new(),
            actions: vec![
                format!("Microsoft.Custom{r}/*/read"),
                format!("Microsoft.Custom{r}/things/write"),
                "Microsoft.Network/*/read".into(),
            ],
            not_actions: vec![format!("Microsoft.Custom{r}/secrets/read")],
            assignable_scopes: vec!["/".into()],
            built_in: false,
        };
        store.put_role_definition(role, event("bench")).await?;
    }
    let sub = "b0000000-0000-4000-8000-000000000003";
    let mut tasks = Vec::new();
    for i in 0..args.assignments.saturating_sub(1) {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_role_assignment(
                    "bench",
                    &format!("role{}", i % 10),
                    &format!("/subscriptions/{sub}/resourceGroups/rg{i}"),
                    event("bench"),
                )
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    store
        .create_role_assignment(
            "bench",
            "JIT Network Access Requester",
            &format!("/subscriptions/{sub}/resourceGroups/target"),
            event("bench"),
        )
        .await?;
    let authz = Authz::default();
    let resource = format!("/subscriptions/{sub}/resourceGroups/target/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default");
    let first = Instant::now();
    let grants = authz.grants(store.as_ref(), &principal).await?;
    let resolve = first.elapsed();
    anyhow::ensure!(grants.assignments.len() == args.assignments as usize, "expected {} assignments", args.assignments);
    let mut allowed = Vec::with_capacity(args.checks as usize);
    let mut denied = Vec::with_capacity(args.checks as usize);
    for _ in 0..args.checks {
        let t = Instant::now();
        let g = authz.grants(store.as_ref(), &principal).await?;
        let ok = g.permits(actions::POLICY_INITIATE, &resource);
        allowed.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(ok, "the check should allow");
        let t = Instant::now();
        let g = authz.grants(store.as_ref(), &principal).await?;
        let no = g.permits(actions::POLICY_WRITE, &resource);
        denied.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(!no, "the check should deny");
    }
    let report = |label: &str, mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
        println!("{label}: mean {mean:.2} µs  p50 {:.2} µs  p99 {p99:.2} µs", v[v.len() / 2]);
    };
    println!(
        "jitgate bench authz: one principal holding {} role assignments (10 custom roles, the allowing one last)",
        args.assignments
    );
    println!("resolving the assignments once (store read, then cached): {:.1} ms", resolve.as_secs_f64() * 1000.0);
    report("allowed check (cache hit + evaluation)", allowed);
    report("denied check (cache hit + full scan)", denied);
    Ok(())
}

/// `jitgate bench audit`: a log of many records over 1,000 VMs and 30 days; the first page of a
/// query filtered by one VM and a time window, and a full chain verification.
pub async fn audit(args: jitgate_cli::bench::AuditBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, bench_keys()?).map_err(|e| anyhow::anyhow!("{e}"))?);
    let sub = "b0000000-0000-4000-8000-000000000004";
    let start = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    let step = time::Duration::days(30) / args.records.max(1) as i32;
    let t = Instant::now();
    let mut n = 0u32;
    while n < args.records {
        let chunk: Vec<AuditEvent> = (n..(n + 10_000).min(args.records))
            .map(|i| {
                let mut e = event("bench");
                e.time = start + step * i as i32;
                e.operation = "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action".into();
                e.status = AuditStatus::Succeeded;
                e.caller = format!("user{}", i % 50);
                e.resource_id = format!(
                    "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm{}",
                    i % 1000
                );
                e.properties.insert("ports".into(), "22".into());
                e
            })
            .collect();
        n += chunk.len() as u32;
        store.record_many(chunk).await?;
    }
    println!(
        "jitgate bench audit: {} records over 1,000 VMs and 30 days (written in {:.1} s)",
        args.records,
        t.elapsed().as_secs_f64()
    );
    let filter = jitgate_store::AuditFilter {
        resource_id: Some(format!(
            "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm42"
        )),
        from: Some(start + time::Duration::days(10)),
        to: Some(start + time::Duration::days(20)),
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..20 {
        let t = Instant::now();
        found = store.query_audit(&filter, 0, 100).await?.len();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "first page (100) filtered by one VM and a 10-day window: {found} records, p50 {:.2} ms, max {:.2} ms",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    let t = Instant::now();
    let v = store.verify_audit().await?;
    println!(
        "verify of {} records: {} in {:.2} s",
        v.records,
        if v.valid { "intact" } else { "BROKEN" },
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A throwaway key for a benchmark's own database (it holds no webhooks worth keeping).
fn bench_keys() -> anyhow::Result<jitgate_store::secrets::Keyring> {
    jitgate_store::secrets::Keyring::generate().map_err(|e| anyhow::anyhow!(e))
}
