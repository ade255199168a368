//! [`CompileLease`]: a lease on compiling one key, shared by every process of a fleet.

use crate::CacheKey;

/// A lease that lets one process of a fleet compile a key while the others wait for its
/// artifact instead of compiling it too (the fleet-wide counterpart of a host's in-process single
/// flight). Implemented by a shared cache layer (cache-redis); used by vm-host's loader.
///
/// Leases only save work, they never decide correctness: a process that cannot reach the lease
/// store, or that waits past its own limit, compiles by itself. A lease expires on its own if
/// its holder dies, and only its holder can release it.
pub trait CompileLease: Send + Sync {
    /// Tries to take the lease on compiling `key`. Never blocks longer than the implementation's
    /// timeouts.
    fn try_acquire(&self, key: &CacheKey) -> LeaseAttempt;
}

/// The outcome of [`CompileLease::try_acquire`].
#[non_exhaustive]
pub enum LeaseAttempt {
    /// This process holds the lease: compile, publish, then [`Lease::release`] it.
    Won(Box<dyn Lease>),
    /// Another process holds it: wait for its artifact, and try again later.
    Held,
    /// The lease store cannot be asked (down, slow, circuit open): compile without a lease.
    Unavailable,
}

/// A lease held by this process. The holder keeps it alive while it compiles (a long compile
/// outlives the lease's time to live); releasing it (or dropping it) ends it.
pub trait Lease: Send {
    /// Ends the lease, after everything queued before it (the artifact's upload) is done.
    fn release(self: Box<Self>);
}
