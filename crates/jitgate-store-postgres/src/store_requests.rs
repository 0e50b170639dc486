//! Access requests: initiate (the hot path of a replica), and the requests across policies for
//! the portal's My access and Approvals (those that still hold a live, pending or scheduled
//! grant, newest first).
//!
//! An initiate runs in three round trips, each a pipeline of statements that do not depend on
//! each other's answers (the server still runs them in order): lock the policy and read its
//! rules (and an earlier request with the same client request id); read the request's VMs and
//! lock the grants it would supersede; supersede those, insert the request with its grants,
//! and read the webhooks that may want to hear of it. The decision between the first and the
//! second is core's (`decide`), as are the supersession and the events.

use super::*;

impl PgStore {
    pub(crate) async fn load_open_requests(
        &self,
        requestor: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, AccessRequestRecord)>> {
        let requestor = requestor.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |db| {
            Box::pin(async move {
                let set = grants::words(&[GrantStatus::Initiated, GrantStatus::Pending, GrantStatus::Scheduled]);
                let found = db
                    .rows(
                        "SELECT DISTINCT r.rid, r.policy_id FROM requests r JOIN grants g ON g.rid = r.rid \
                         WHERE g.status = ANY($1) AND ($2::text IS NULL OR r.requestor = $2) \
                         ORDER BY r.rid DESC LIMIT $3",
                        &[&set, &requestor, &limit],
                    )
                    .await?;
                let mut out = Vec::with_capacity(found.len());
                for row in found {
                    let rid: i64 = row.try_get(0)?;
                    out.push((row.try_get(1)?, rows::load_request(db, rid).await?));
                }
                Ok(out)
            })
        })
        .await
    }
}

/// The earlier request of the same requestor on policy `key` with the same client request id.
const EARLIER: &str = "SELECT r.rid FROM requests r JOIN policies p ON p.pid = r.pid \
                       WHERE p.key = $1 AND r.principal = $2 AND r.client_request_id = $3";

pub(crate) async fn initiate(ctx: &mut Ctx, cmd: InitiateCommand, audit: AuditEvent) -> Res<InitiateOutcome> {
    let key = cmd.policy.key();
    // Initiates of one policy run one after the other: each decides against the policy and the
    // grants as the one before left them (supersede, replay). The policy is locked first; what
    // is read with it is read after the lock is held.
    let db = &ctx.db;
    let [lock, vms, ports] = rows::LOCK_POLICY_SQL;
    db.prepare(&[lock, vms, ports, EARLIER]).await?;
    let earlier = async {
        match &cmd.client_request_id {
            Some(client_id) => db.opt(EARLIER, &[&key, &cmd.requestor, client_id]).await,
            None => Ok(None),
        }
    };
    let (found, earlier) = tokio::try_join!(biased; rows::lock_policy_only(db, &key), earlier)?;
    let Some((pid, policy)) = found else {
        return reject(ctx, audit, policy_not_found(&cmd.policy));
    };
    if let Some(earlier) = earlier {
        let request = rows::load_request(db, earlier.try_get(0)?).await?;
        return Ok(InitiateOutcome { request, replayed: true });
    }
    let plan = match decide(&policy, &cmd.draft, cmd.caller, cmd.now) {
        Ok(plan) => plan,
        Err(invalid) => return reject(ctx, audit, invalid),
    };
    // A grant that needs approval waits (and opens nothing), a scheduled one opens later: each
    // supersedes older grants only once it opens. Set-based for a request over many VMs: the
    // grants it opens supersede older ones in one statement (a request names each VM and port
    // once, so its own grants never meet there), its VMs are read in one, and its grants are
    // written in one.
    let states: Vec<_> = plan.grants.iter().map(|g| lifecycle::start(g, cmd.now)).collect();
    let opening: Vec<String> =
        plan.grants.iter().zip(&states).filter(|(_, st)| st.is_live()).map(|(g, _)| g.supersede_key()).collect();
    // Behind a gateway a grant carries the connection details: the gateway's public address and
    // the mapped port (when the policy port maps one); and its sources must be of the VM's
    // address family. The request's VMs are read before anything is written, together with
    // the grants the request would supersede (locked now, written below).
    let vm_keys: Vec<String> = plan.grants.iter().map(|g| g.vm_id.key()).collect();
    let (vms, older) =
        tokio::try_join!(biased; rows::get_vms(db, &vm_keys), grants::lock_supersedable(db, pid, &opening))?;
    let mut reaches = Vec::with_capacity(plan.grants.len());
    for g in &plan.grants {
        let reach = match vms.get(&g.vm_id.key()) {
            Some(vm) => Reach::of(
                &policy,
                g,
                vm.spec.gateway.is_some(),
                vm.spec.address,
                vm.agent.as_ref().and_then(|a| a.public_address),
            ),
            None => Ok(Reach::default()),
        };
        match reach {
            Ok(reach) => reaches.push(reach),
            Err(invalid) => return reject(ctx, audit, invalid),
        }
    }
    // A cloud connector keeps a VM's grants in one security group of bounded size.
    let mut cloud_vms: Vec<&VmId> = vms.values().filter(|v| v.cloud.is_some()).map(|v| &v.spec.id).collect();
    cloud_vms.sort_by_key(|v| v.key());
    if !cloud_vms.is_empty() {
        let keys: Vec<String> = cloud_vms.iter().map(|v| v.key()).collect();
        let live = crate::store_cloud::live_rules(db, &keys, cmd.now).await?;
        for vm in cloud_vms {
            let rules = live.get(&vm.key()).map(Vec::as_slice).unwrap_or_default();
            if let Err(invalid) = jitgate_core::cloud::check_request_rules(vm, rules, &plan.grants) {
                return reject(ctx, audit, invalid);
            }
        }
    }
    let superseded = grants::superseded(&older)?;
    let mut requested = Requested::default();
    let mut new_grants = grants::NewGrants::default();
    for (ord, ((g, state), reach)) in plan.grants.iter().zip(&states).zip(reaches).enumerate() {
        let grant = requested.add(g, state, reach);
        new_grants.push(ord, g, state, grant.mapped_port, grant.public_ip.clone());
    }
    let policy_id = policy.reference.id();
    let row = grants::NewRequest {
        pid,
        policy_id: &policy_id,
        requestor: &cmd.requestor,
        start_time: nanos(plan.start_time),
        justification: &plan.justification,
        client_request_id: &cmd.client_request_id,
    };
    let events = outbox::on_initiate(requested.opened());
    let ((), rid, hooks) = tokio::try_join!(
        biased;
        grants::persist_all(db, &superseded),
        new_grants.insert_with_request(db, &row),
        hooks::interested(db, &policy_id, &cmd.requestor),
    )?;
    hooks::enqueue_to(db, &hooks, events, rid, &policy_id, cmd.now).await?;
    let event = requested.event(audit, rid, &plan);
    ctx.bump_revision();
    ctx.audit(event);
    let request = requested.into_record(rid, cmd.requestor, plan);
    Ok(InitiateOutcome { request, replayed: false })
}
