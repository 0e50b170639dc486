//! What other replicas' changes mean here (see [`crate::ReplicaStore`]).

/// What a change committed by another replica means for this one. A store shared by several
/// servers sends these as its changes commit; a store only one server writes has none to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The enforcement revision moved to this value: agents' long-polls wake, the expiry sweep
    /// looks again.
    Changed(u64),
    /// An agent reported a revision applied: `?wait=applied` looks again.
    Applied,
    /// Webhook deliveries were queued.
    Deliveries,
    /// Roles or role assignments changed: cached authorizations are no longer true.
    Roles,
    /// The signals may have had a gap (the listening connection was lost and made again):
    /// everything that waits on a signal looks again.
    Resync,
}
