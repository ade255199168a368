//! The Strata side: vm-cosmwasm's `CwVm`, configured from the same `Setup` as the reference.
//! Each call runs in its own session, committed after it (a block per call), so state also
//! goes through the commit store between steps.

/// The compiler tier the Strata side compiles with (`compare --tier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `TierPolicy::CraneliftOnly`, vm-cosmwasm's default.
    Cranelift,
    /// `TierPolicy::WinchOnly`: every call on the Winch tier and its form of the metering.
    Winch,
}

#[cfg(feature = "strata")]
mod imp {
    use anyhow::{Context as _, anyhow};
    use vm_cosmwasm::{BankConfig, CallContext, CwConfig, CwVm, FailureKind, TierPolicy};

    use crate::common::{
        Call, Ctx, Entries, FailKind, Failure, Gas, Outcome, Setup, Side, block, transaction,
    };

    pub struct Strata {
        vm: CwVm,
        codes: Vec<u64>,
        contracts: Vec<String>,
        _dir: tempfile::TempDir,
    }

    impl Strata {
        pub fn new(setup: &Setup, tier: super::Tier) -> anyhow::Result<Strata> {
            let dir = tempfile::tempdir()?;
            let mut config = CwConfig::for_tests();
            config.tier = match tier {
                super::Tier::Cranelift => TierPolicy::CraneliftOnly,
                super::Tier::Winch => TierPolicy::WinchOnly,
            };
            config.memory_limit = setup.memory_limit as usize;
            config.capabilities = setup.capabilities.iter().cloned().collect();
            config.bech32_prefix = setup.bech32_prefix.to_owned();
            let mut bank = BankConfig::default();
            for (address, coins) in &setup.balances {
                bank = bank.with_balance(address.clone(), coins.clone());
            }
            for metadata in &setup.denom_metadata {
                bank = bank.with_denom_metadata(metadata.clone());
            }
            config.bank = bank;
            let vm = CwVm::open(dir.path(), config).map_err(|e| anyhow!("open: {e}"))?;
            Ok(Strata {
                vm,
                codes: Vec::new(),
                contracts: Vec::new(),
                _dir: dir,
            })
        }
    }

    fn outcome(out: vm_cosmwasm::CallOutcome) -> Outcome {
        let gas = Gas {
            limit: out.gas.limit,
            remaining: out.gas.remaining,
            used_externally: out.gas.used_externally,
            used_internally: out.gas.used_internally,
        };
        let result = out.result.map_err(|f| {
            let kind = match f.kind {
                FailureKind::OutOfGas => FailKind::OutOfGas,
                FailureKind::Trap => FailKind::Trap,
                FailureKind::Aborted => FailKind::Aborted(
                    f.message
                        .strip_prefix("aborted: ")
                        .unwrap_or(&f.message)
                        .to_owned(),
                ),
                FailureKind::WriteAccessDenied => FailKind::WriteAccessDenied,
                FailureKind::Communication => FailKind::Communication,
                FailureKind::Backend => FailKind::Backend,
                other => FailKind::Other(format!("{other:?}")),
            };
            Failure {
                kind,
                message: f.message,
            }
        });
        Outcome { result, gas }
    }

    impl Side for Strata {
        fn store_code(&mut self, wasm: &[u8]) -> anyhow::Result<()> {
            let mut s = self.vm.session(self.vm.latest())?;
            let (code_id, _checksum) = s.store_code(wasm)?;
            s.commit()?;
            self.codes.push(code_id);
            Ok(())
        }

        fn call(
            &mut self,
            ctx: &Ctx,
            call: &Call,
            _address: Option<&str>,
        ) -> anyhow::Result<(Outcome, Option<String>)> {
            let context = CallContext {
                block: block(),
                transaction: Some(transaction()),
                sender: ctx.sender.clone(),
                funds: ctx.funds.clone(),
                gas_limit: ctx.gas_limit,
            };
            let contract = |i: usize| {
                self.contracts
                    .get(i)
                    .cloned()
                    .with_context(|| format!("no contract {i}"))
            };
            let code = |i: usize| {
                self.codes
                    .get(i)
                    .copied()
                    .with_context(|| format!("no code {i}"))
            };
            let mut s = self.vm.session(self.vm.latest())?;
            let (out, address) = match call {
                Call::Instantiate {
                    code: c,
                    msg,
                    label,
                    admin,
                } => {
                    let (address, out) =
                        s.instantiate(&context, code(*c)?, msg, label, admin.as_deref())?;
                    (out, Some(address))
                }
                Call::Execute { contract: i, msg } => {
                    (s.execute(&context, &contract(*i)?, msg)?, None)
                }
                Call::Query { contract: i, msg } => (s.query(&context, &contract(*i)?, msg)?, None),
                Call::Sudo { contract: i, msg } => (s.sudo(&context, &contract(*i)?, msg)?, None),
                Call::Migrate {
                    contract: i,
                    code: c,
                    msg,
                } => (s.migrate(&context, &contract(*i)?, code(*c)?, msg)?, None),
            };
            s.commit()?;
            let out = outcome(out);
            if let (Call::Instantiate { .. }, Some(a)) = (call, &address) {
                if out.succeeded() {
                    self.contracts.push(a.clone());
                }
            }
            Ok((out, address))
        }

        fn storage(&mut self, contract: usize) -> anyhow::Result<Entries> {
            let address = self
                .contracts
                .get(contract)
                .cloned()
                .with_context(|| format!("no contract {contract}"))?;
            let mut s = self.vm.session(self.vm.latest())?;
            Ok(s.storage(&address)?)
        }
    }
}

#[cfg(feature = "strata")]
pub use imp::Strata;

/// Built without the `strata` feature: the Strata side refuses to start.
#[cfg(not(feature = "strata"))]
pub struct Strata;

#[cfg(not(feature = "strata"))]
impl Strata {
    pub fn new(_setup: &crate::common::Setup, _tier: Tier) -> anyhow::Result<Strata> {
        anyhow::bail!("this build has no Strata side (feature `strata`): use --reference-twice")
    }
}

#[cfg(not(feature = "strata"))]
impl crate::common::Side for Strata {
    fn store_code(&mut self, _wasm: &[u8]) -> anyhow::Result<()> {
        unreachable!("never constructed")
    }
    fn call(
        &mut self,
        _ctx: &crate::common::Ctx,
        _call: &crate::common::Call,
        _address: Option<&str>,
    ) -> anyhow::Result<(crate::common::Outcome, Option<String>)> {
        unreachable!("never constructed")
    }
    fn storage(&mut self, _contract: usize) -> anyhow::Result<crate::common::Entries> {
        unreachable!("never constructed")
    }
}
