//! The Cranelift compile budget: a structural estimate of how long Cranelift takes to compile a
//! module ([`CompileCost`], one wasmparser pass, no compile), and the limits a [`Vm`] holds it
//! to ([`CompileBudget`], [`VmConfig::cranelift_budget`]).
//!
//! Cranelift's compile time grows faster than linearly with some shapes of function, so a
//! module built to compile slowly is a denial of service; Winch compiles in one pass. The
//! estimate is a deterministic function of the bytes (integers only), so every node decides
//! alike.
//!
//! [`Vm`]: crate::Vm
//! [`VmConfig::cranelift_budget`]: crate::VmConfig::cranelift_budget

use wasmparser::{FunctionBody, Operator, Parser, Payload};

use crate::VmError;
use crate::rewrite::{invalid, malformed};

/// A structural estimate of a module's Cranelift compile cost, in microseconds of one core of
/// the development machine (an x86-64 laptop-class core), from one pass over its code.
///
/// Per function, summed over the module:
///
/// - 6 µs per operator: linear work (translation, optimisation, register allocation). Fitted
///   to the corpus compiled on one thread: 5.6 µs (hackatom), 7.0 µs (sql.js), 5.7 µs
///   (esbuild) per operator; straight-line code (`huge_function`) takes 2.9 µs.
/// - 1 µs per 100 of the sum, over the function's operators, of the control depth each
///   stands at (the function body is depth 1): deep nesting is quadratic (8,192 nested blocks:
///   3.2 s for 71 k operators).
/// - 1 µs per 128 of locals (parameters included) × operators: locals live across a loop are
///   block parameters of every loop header and live ranges for the register allocator, and
///   that is quadratic (4,096 `i64` locals updated in a loop: 1.1 s for 33 k operators; 16,384:
///   116 s).
/// - 1.5 µs per `br_table` entry (32,768 entries: 51 ms).
///
/// Against single-threaded compiles (release build, 2026-12-01): hackatom 752 ms estimated /
/// 664 ms measured, cyberpunk 667 / 545, tree-sitter 594 / 639, sql.js 1,882 / 2,075, esbuild
/// 38.3 s / 26.7 s; the adversarial modules of docs/BENCHMARKS.md's
/// `tiers/compile_adversarial/*` within 1.3x below 1 s, straight-line code over-counted about
/// 2x. Past a quadratic cliff it under-counts (16,384 looping locals: 17.6 s estimated, 116 s
/// measured), so it is a gate to keep well below the cliffs, not a prediction of time, and
/// not of time on another machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileCost {
    total_us: u64,
    largest_us: u64,
    largest: Option<u32>,
    functions: u32,
}

impl CompileCost {
    /// The estimate of `wasm` (one wasmparser pass; the module is not validated, only read).
    pub fn of(wasm: &[u8]) -> Result<CompileCost, VmError> {
        let mut counter = CostCounter::default();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(malformed)? {
                Payload::Version {
                    encoding: wasmparser::Encoding::Component,
                    ..
                } => {
                    return Err(invalid(
                        "components are not supported, deploy a core module",
                    ));
                }
                payload => counter.payload(&payload).map_err(malformed)?,
            }
        }
        Ok(counter.finish())
    }

    /// The estimate of the whole module, in microseconds (saturating).
    pub fn total_us(&self) -> u64 {
        self.total_us
    }

    /// The estimate of the costliest function, in microseconds.
    pub fn largest_function_us(&self) -> u64 {
        self.largest_us
    }

    /// The index (imports included) of the costliest function; `None` without functions.
    pub fn largest_function(&self) -> Option<u32> {
        self.largest
    }

    /// The functions the module defines.
    pub fn functions(&self) -> u32 {
        self.functions
    }
}

/// The limits of a [`CompileCost`] that a [`Vm`](crate::Vm) compiles with Cranelift: a module
/// over either is compiled with Winch only (never tiered up) when the [`TierPolicy`] has
/// Winch, and refused under [`TierPolicy::CraneliftOnly`] ([`VmError::OverCompileBudget`]).
///
/// [`TierPolicy`]: crate::TierPolicy
/// [`TierPolicy::CraneliftOnly`]: crate::TierPolicy::CraneliftOnly
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileBudget {
    /// The largest estimate of one function, in microseconds. Default 3 s: the costliest
    /// function of the corpus is esbuild's, estimated at 1.9 s (sql.js's 0.12 s, hackatom's
    /// 0.05 s); the quadratic shapes pass it well before their cliffs (8,192 nested blocks:
    /// 3.3 s estimated, 8,192 looping locals: 4.6 s, where 16,384 takes 116 s).
    pub function_us: u64,
    /// The largest estimate of the whole module, in microseconds. Default 60 s: esbuild (the
    /// largest corpus module, 14 MB, 27 s of Cranelift on one core, 14 s on two) is estimated
    /// at 38 s. It bounds a module of many functions each under the per-function limit.
    pub module_us: u64,
}

impl Default for CompileBudget {
    fn default() -> Self {
        CompileBudget {
            function_us: 3_000_000,
            module_us: 60_000_000,
        }
    }
}

impl CompileBudget {
    /// `Ok` when `cost` is within both limits, else which one it exceeds and by how much.
    pub fn check(&self, cost: &CompileCost) -> Result<(), OverBudget> {
        if cost.largest_us > self.function_us {
            return Err(OverBudget {
                function: cost.largest,
                estimate_us: cost.largest_us,
                budget_us: self.function_us,
            });
        }
        if cost.total_us > self.module_us {
            return Err(OverBudget {
                function: None,
                estimate_us: cost.total_us,
                budget_us: self.module_us,
            });
        }
        Ok(())
    }
}

/// A module over a [`CompileBudget`]: the estimate and the limit it exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// The function over the per-function limit (index, imports included); `None` when the
    /// whole module is over the per-module limit.
    pub function: Option<u32>,
    /// The estimate, in microseconds.
    pub estimate_us: u64,
    /// The limit, in microseconds.
    pub budget_us: u64,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        let (what, per) = match self.function {
            Some(index) => (format!("function {index}"), "function"),
            None => ("the module".to_owned(), "module"),
        };
        write!(
            f,
            "the estimated Cranelift compile time of {what} is {:.1} ms, over the budget of {:.1} ms per {per}",
            ms(self.estimate_us),
            ms(self.budget_us)
        )
    }
}

impl std::error::Error for OverBudget {}

impl From<OverBudget> for VmError {
    fn from(over: OverBudget) -> Self {
        VmError::OverCompileBudget(over)
    }
}

/// Accumulates a [`CompileCost`] over the payloads of one parse (shared with the deploy's
/// own pass, `rewrite::shape`, so a deploy reads the code once).
#[derive(Debug, Default)]
pub(crate) struct CostCounter {
    /// Parameters per type index (0 for a type that is not a function).
    type_params: Vec<u32>,
    /// Parameters of each defined function, in order.
    function_params: Vec<u32>,
    imported_functions: u32,
    defined: u32,
    cost: CompileCost,
}

/// The running figures of one function body.
#[derive(Debug)]
pub(crate) struct FunctionCost {
    locals: u64,
    operators: u64,
    depth: u64,
    depth_sum: u64,
    br_table_entries: u64,
}

impl CostCounter {
    /// Takes what it needs of a payload other than a code entry (types, imports, functions)
    /// and reads whole code entries itself.
    pub(crate) fn payload(&mut self, payload: &Payload<'_>) -> wasmparser::Result<()> {
        match payload {
            Payload::TypeSection(reader) => {
                for group in reader.clone() {
                    for ty in group?.types() {
                        let params = match &ty.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => f.params().len() as u32,
                            _ => 0,
                        };
                        self.type_params.push(params);
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.clone().into_imports() {
                    if matches!(
                        import?.ty,
                        wasmparser::TypeRef::Func(_) | wasmparser::TypeRef::FuncExact(_)
                    ) {
                        self.imported_functions += 1;
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader.clone() {
                    let params = self.type_params.get(ty? as usize).copied().unwrap_or(0);
                    self.function_params.push(params);
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut function = self.function(body)?;
                let mut ops = body.get_operators_reader()?;
                while !ops.eof() {
                    function.operator(&ops.read()?);
                }
                self.add(function);
            }
            _ => {}
        }
        Ok(())
    }

    /// Starts a function body: reads its locals.
    pub(crate) fn function(&self, body: &FunctionBody<'_>) -> wasmparser::Result<FunctionCost> {
        let params = self
            .function_params
            .get(self.defined as usize)
            .copied()
            .unwrap_or(0);
        let mut locals = u64::from(params);
        for group in body.get_locals_reader()? {
            locals = locals.saturating_add(u64::from(group?.0));
        }
        Ok(FunctionCost {
            locals,
            operators: 0,
            depth: 1,
            depth_sum: 0,
            br_table_entries: 0,
        })
    }

    /// Ends a function body.
    pub(crate) fn add(&mut self, function: FunctionCost) {
        let us = function.estimate_us();
        let index = self.imported_functions.saturating_add(self.defined);
        if self.cost.largest.is_none() || us > self.cost.largest_us {
            self.cost.largest_us = us;
            self.cost.largest = Some(index);
        }
        self.cost.total_us = self.cost.total_us.saturating_add(us);
        self.defined += 1;
        self.cost.functions = self.defined;
    }

    pub(crate) fn finish(self) -> CompileCost {
        self.cost
    }
}

impl FunctionCost {
    /// Counts one operator of the body.
    pub(crate) fn operator(&mut self, op: &Operator<'_>) {
        self.operators += 1;
        self.depth_sum = self.depth_sum.saturating_add(self.depth);
        match op {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. } => self.depth += 1,
            Operator::End => self.depth = self.depth.saturating_sub(1),
            Operator::BrTable { targets } => {
                self.br_table_entries = self
                    .br_table_entries
                    .saturating_add(u64::from(targets.len()) + 1);
            }
            _ => {}
        }
    }

    /// The formula of [`CompileCost`].
    fn estimate_us(&self) -> u64 {
        self.operators
            .saturating_mul(6)
            .saturating_add(self.depth_sum / 100)
            .saturating_add(self.locals.saturating_mul(self.operators) / 128)
            .saturating_add(self.br_table_entries.saturating_mul(3) / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_harness::adversarial::Shape;

    #[test]
    fn the_estimate_follows_the_formula() {
        let wasm = wat::parse_str(
            r#"(module
                 (import "env" "f" (func))
                 (func (param i32) (local i64 i64)
                   (block (loop (br_table 0 1 1 (local.get 0))))))"#,
        )
        .expect("wat");
        let cost = CompileCost::of(&wasm).expect("parses");
        // 6 operators (block, loop, local.get, br_table, end, end) and the body's end: 7;
        // depths 1, 2, 3, 3, 3, 2, 1: 15; 3 locals; 3 br_table entries (2 and the default).
        assert_eq!(cost.functions(), 1);
        assert_eq!(cost.largest_function(), Some(1));
        let (operators, depth_sum, locals, entries) = (7u64, 15u64, 3u64, 3u64);
        assert_eq!(
            cost.total_us(),
            operators * 6 + depth_sum / 100 + locals * operators / 128 + entries * 3 / 2
        );
        assert_eq!(cost.largest_function_us(), cost.total_us());
    }

    #[test]
    fn adversarial_modules_at_large_sizes_are_over_the_default_budget_and_small_ones_under() {
        let budget = CompileBudget::default();
        for shape in Shape::ALL {
            let small = CompileCost::of(&shape.module(256)).expect("parses");
            assert_eq!(budget.check(&small), Ok(()), "{}", shape.name());
        }
        for (shape, size) in [
            (Shape::DeepNesting, 16_384),
            (Shape::ManyLocals, 8_192),
            (Shape::HugeFunction, 131_072),
        ] {
            let cost = CompileCost::of(&shape.module(size)).expect("parses");
            let over = budget.check(&cost).expect_err(shape.name());
            assert_eq!(over.function, Some(0), "{over}");
        }
    }

    #[test]
    fn the_test_contracts_are_under_the_default_budget() {
        let budget = CompileBudget::default();
        for wat in [
            include_str!("../contracts/counter.wat"),
            include_str!("../contracts/bank.wat"),
            include_str!("../contracts/ledger.wat"),
        ] {
            let cost = CompileCost::of(&wat::parse_str(wat).expect("wat")).expect("parses");
            assert_eq!(budget.check(&cost), Ok(()));
        }
    }

    #[test]
    fn the_message_names_the_estimate_and_the_budget() {
        let budget = CompileBudget {
            function_us: 1_000,
            module_us: 2_000,
        };
        let cost = CompileCost {
            total_us: 1_500,
            largest_us: 1_500,
            largest: Some(3),
            functions: 1,
        };
        assert_eq!(
            budget.check(&cost).expect_err("over").to_string(),
            "the estimated Cranelift compile time of function 3 is 1.5 ms, over the budget of 1.0 ms per function"
        );
        let many = CompileCost {
            total_us: 5_000,
            largest_us: 900,
            largest: Some(0),
            functions: 9,
        };
        assert_eq!(
            budget.check(&many).expect_err("over").to_string(),
            "the estimated Cranelift compile time of the module is 5.0 ms, over the budget of 2.0 ms per module"
        );
    }
}
