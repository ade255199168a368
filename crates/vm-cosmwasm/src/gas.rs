//! Gas: the host-call gas table ([`GasConfig`], cosmwasm-vm's values), what a backend call
//! costs ([`GasInfo`]), and the gas state of one call ([`GasState`]).
//!
//! A call's gas is one counter, the injected `gas left` global of the instance (see
//! `metering`): wasm operators decrement it through the injected checks, host functions through
//! `charge` (cosmwasm-vm's `process_gas_info`). Gas used by the backend outside the VM
//! (storage, API and querier costs a chain charges) is also kept apart in
//! [`GasState::externally_used`], so a report can split the total.

use crate::backend::BackendError;

/// The gas cost of a batch: `base + per_item * items`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LinearGasCost {
    /// Charged once per batch.
    pub base: u64,
    /// Charged per item of the batch.
    pub per_item: u64,
}

impl LinearGasCost {
    /// The cost of `items` items, or `None` on overflow (which the caller treats as running
    /// out of gas, as cosmwasm-vm does).
    pub fn total_cost(&self, items: u64) -> Option<u64> {
        self.base.checked_add(self.per_item.checked_mul(items)?)
    }
}

/// What the VM charges for the host functions it implements itself (the backend's own costs
/// come back from the backend as [`GasInfo`]). The defaults are cosmwasm-vm 3.0's, so that the
/// same call reports the same gas on both.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct GasConfig {
    /// secp256k1 signature verification.
    pub secp256k1_verify_cost: u64,
    /// secp256k1 public key recovery.
    pub secp256k1_recover_pubkey_cost: u64,
    /// secp256r1 signature verification.
    pub secp256r1_verify_cost: u64,
    /// secp256r1 public key recovery.
    pub secp256r1_recover_pubkey_cost: u64,
    /// ed25519 signature verification.
    pub ed25519_verify_cost: u64,
    /// ed25519 batch verification.
    pub ed25519_batch_verify_cost: LinearGasCost,
    /// ed25519 batch verification with a single public key.
    pub ed25519_batch_verify_one_pubkey_cost: LinearGasCost,
    /// BLS12-381 aggregation of G1 points.
    pub bls12_381_aggregate_g1_cost: LinearGasCost,
    /// BLS12-381 aggregation of G2 points.
    pub bls12_381_aggregate_g2_cost: LinearGasCost,
    /// BLS12-381 hash to G1.
    pub bls12_381_hash_to_g1_cost: u64,
    /// BLS12-381 hash to G2.
    pub bls12_381_hash_to_g2_cost: u64,
    /// BLS12-381 pairing equality check.
    pub bls12_381_pairing_equality_cost: LinearGasCost,
    /// Writing a region into the contract's memory, per byte.
    pub write_region_cost: LinearGasCost,
    /// Reading a region of at most 8 MB, per byte.
    pub read_region_small_cost: LinearGasCost,
    /// Reading a region of more than 8 MB, per byte.
    pub read_region_large_cost: LinearGasCost,
    /// Checking bytes are UTF-8, per byte.
    pub string_from_bytes_cost: LinearGasCost,
    /// Any host call, charged first.
    pub host_call_cost: u64,
}

/// Gas per microsecond of host work: cosmwasm-vm's target of 10^12 gas a second.
const GAS_PER_US: u64 = 1_000_000;

impl Default for GasConfig {
    fn default() -> Self {
        let linear = |base, per_item| LinearGasCost { base, per_item };
        GasConfig {
            secp256k1_verify_cost: 96 * GAS_PER_US,
            secp256k1_recover_pubkey_cost: 194 * GAS_PER_US,
            secp256r1_verify_cost: 279 * GAS_PER_US,
            secp256r1_recover_pubkey_cost: 592 * GAS_PER_US,
            ed25519_verify_cost: 35 * GAS_PER_US,
            ed25519_batch_verify_cost: linear(24 * GAS_PER_US, 21 * GAS_PER_US),
            ed25519_batch_verify_one_pubkey_cost: linear(36 * GAS_PER_US, 10 * GAS_PER_US),
            bls12_381_aggregate_g1_cost: linear(136 * GAS_PER_US / 2, 24 * GAS_PER_US / 2),
            bls12_381_aggregate_g2_cost: linear(207 * GAS_PER_US / 2, 49 * GAS_PER_US / 2),
            bls12_381_hash_to_g1_cost: 563 * GAS_PER_US,
            bls12_381_hash_to_g2_cost: 871 * GAS_PER_US,
            bls12_381_pairing_equality_cost: linear(2112 * GAS_PER_US, 163 * GAS_PER_US),
            write_region_cost: linear(230_000, 570),
            read_region_small_cost: linear(200_000, 115),
            read_region_large_cost: linear(0, 520),
            string_from_bytes_cost: linear(28_700, 1_400),
            host_call_cost: 18_000,
        }
    }
}

impl GasConfig {
    /// The cost of reading a region of `bytes` bytes (`None` on overflow).
    pub fn read_region_cost(&self, bytes: usize) -> Option<u64> {
        const THRESHOLD: usize = 8 * 1000 * 1000;
        if bytes <= THRESHOLD {
            self.read_region_small_cost.total_cost(bytes as u64)
        } else {
            self.read_region_large_cost.total_cost(bytes as u64)
        }
    }
}

/// What a backend call (or a VM function) costs: `cost` is charged to the VM's counter alone,
/// `externally_used` also counts as gas the chain used outside the VM.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct GasInfo {
    /// Gas of work done inside the VM.
    pub cost: u64,
    /// Gas the backend used outside the VM.
    pub externally_used: u64,
}

impl GasInfo {
    /// Only VM cost.
    pub fn with_cost(cost: u64) -> GasInfo {
        GasInfo {
            cost,
            externally_used: 0,
        }
    }

    /// Only external use.
    pub fn with_externally_used(externally_used: u64) -> GasInfo {
        GasInfo {
            cost: 0,
            externally_used,
        }
    }

    /// Nothing.
    pub fn free() -> GasInfo {
        GasInfo::default()
    }
}

impl std::ops::AddAssign for GasInfo {
    fn add_assign(&mut self, other: GasInfo) {
        self.cost = self.cost.saturating_add(other.cost);
        self.externally_used = self.externally_used.saturating_add(other.externally_used);
    }
}

/// The gas of one call outside the instance's counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GasState {
    /// The call's limit (internal and external use together); never changes during the call.
    pub gas_limit: u64,
    /// The gas the backend reported as used outside the VM, so far.
    pub externally_used: u64,
}

/// Gas ran out (the call fails with out of gas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfGas;

/// Charges `info` against a counter holding `gas_left`, as cosmwasm-vm's `process_gas_info`:
/// the external part is added to `state`, the counter drops by both parts (saturating at 0),
/// and the charge fails when it was more than what was left. Returns the new counter value
/// and whether gas ran out; the caller stores the value in the instance's counter either way.
pub(crate) fn charge(
    state: &mut GasState,
    gas_left: u64,
    info: GasInfo,
) -> (u64, Result<(), OutOfGas>) {
    state.externally_used = state.externally_used.saturating_add(info.externally_used);
    let new_left = gas_left
        .saturating_sub(info.externally_used)
        .saturating_sub(info.cost);
    let ok = match info.externally_used.checked_add(info.cost) {
        Some(total) if total <= gas_left => Ok(()),
        _ => Err(OutOfGas),
    };
    (new_left, ok)
}

/// What a backend error means for gas accounting: only [`BackendError::OutOfGas`] is gas.
pub(crate) fn is_out_of_gas(error: &BackendError) -> bool {
    matches!(error, BackendError::OutOfGas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_over_what_is_left_fails_and_empties_the_counter() {
        let mut state = GasState {
            gas_limit: 100,
            externally_used: 0,
        };
        assert_eq!(
            charge(&mut state, 100, GasInfo::new_for_test(30, 20)),
            (50, Ok(()))
        );
        assert_eq!(state.externally_used, 20);
        assert_eq!(
            charge(&mut state, 50, GasInfo::with_cost(51)),
            (0, Err(OutOfGas))
        );
        assert_eq!(
            charge(&mut state, 10, GasInfo::new_for_test(u64::MAX, 1)),
            (0, Err(OutOfGas))
        );
    }

    impl GasInfo {
        fn new_for_test(cost: u64, externally_used: u64) -> GasInfo {
            GasInfo {
                cost,
                externally_used,
            }
        }
    }
}
