//! The gas-metering rewrite of `store_code` ([`instrument`]): it injects into the bytecode
//! exactly the checks cosmwasm-vm 3.0.10's metering middleware injects while compiling, with
//! its cost function, so that any compiler runs the same accounting.
//!
//! cosmwasm-vm's middleware, reproduced here operator by operator:
//! - every operator costs 115 gas, an *accounting* operator (a branch source or target:
//!   `loop`, `end`, `if`, `else`, `br`, `br_if`, `br_table`, `call`, `call_indirect`,
//!   `return`, and the exception, tail-call, GC and typed-reference branches) 1,610;
//! - costs accumulate over the operators of a function; just before each accounting operator
//!   the accumulated cost (that operator's own included) is charged by an injected check, and
//!   the accumulator restarts at 0. The final `end` of a body is an accounting operator, so
//!   nothing is left uncharged;
//! - a function declaring more than 29 locals is charged 115 per local beyond 29 at its start:
//!   added to the first check when the first operator is an accounting operator, else charged
//!   by a check of its own before the first operator;
//! - the check is `if counter < cost { exhausted = 1; unreachable } counter -= cost` (unsigned
//!   compare): on exhaustion the counter keeps the value it had before the check.
//!
//! Two mutable globals are appended after all others, so no existing global index moves:
//! [`GAS_LEFT_EXPORT`] (`i64`, read as `u64`, initially 0: the host sets it before each call)
//! and [`GAS_EXHAUSTED_EXPORT`] (`i32`, 0 or 1). Every other byte of the module is copied as
//! it was; function bodies are copied operator by operator with the checks inserted. The pass
//! is linear in the module's size.
//!
//! The check has two encodings ([`CheckForm`]), with the same accounting to the unit:
//! - [`CheckForm::Inline`]: the check's 12 operators before each accounting operator. The
//!   fastest code once optimised; the form Cranelift compiles.
//! - [`CheckForm::Call`]: `i64.const cost; call $charge` before each accounting operator, with
//!   `$charge` (type `[i64] -> []`) one appended function holding the check. Appended after all
//!   others (its type after all types, the function after all functions), so no existing index
//!   moves. The form Winch compiles (a deploy waits for it): hackatom is 410 KB in it against
//!   715 KB inline (296 KB unmetered), and Winch compiles it in about a sixth less time; its
//!   code is slower by a call per check until the Cranelift tier-up replaces it. The one
//!   difference: the frames differ (`$charge`'s is one more at each check), so the depth at
//!   which the stack runs out differs from the inline form's, as it already differs between
//!   the tiers.

use wasm_encoder::{Encode, Instruction};
use wasmparser::{BinaryReader, FunctionBody, Operator, Parser, Payload, TypeRef};

use crate::check::CheckError;

/// The export name of the gas counter (`i64` global, read as `u64`).
pub(crate) const GAS_LEFT_EXPORT: &str = "cw_gas_left";
/// The export name of the exhaustion flag (`i32` global: 1 once a check ran out).
pub(crate) const GAS_EXHAUSTED_EXPORT: &str = "cw_gas_exhausted";
/// How the injected check is encoded (see the module documentation). Both charge the same gas
/// at the same points and trap at the same check with the same counter and flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckForm {
    /// The check inline before each accounting operator (Cranelift's form).
    Inline,
    /// A call of one appended charging function before each accounting operator (Winch's form).
    Call,
}

impl CheckForm {
    /// The version of this form's rewrite, for cache keys: change it whenever the form's output
    /// changes. The two forms never share a number, so an artifact of one is never loaded for
    /// the other.
    pub(crate) fn version(self) -> u32 {
        match self {
            CheckForm::Inline => 1,
            CheckForm::Call => 2,
        }
    }
}

/// The largest function body wasmparser and wasmtime accept (wasmparser's private
/// `MAX_WASM_FUNCTION_SIZE`).
const MAX_FUNCTION_BODY_BYTES: usize = 7_654_321;

/// Gas of an ordinary operator (cosmwasm-vm's `GAS_PER_OPERATION`).
pub(crate) const GAS_PER_OPERATION: u64 = 115;
/// Gas of an accounting operator: 14 ordinary ones.
pub(crate) const GAS_PER_ACCOUNTING_OPERATION: u64 = GAS_PER_OPERATION * 14;
/// Locals a function may declare before its start is charged for them
/// (cosmwasm-vm's `CHARGED_LOCALS_THRESHOLD - 1`).
pub(crate) const FREE_LOCALS: u64 = 29;

/// Whether `op` is one of the operators before which the middleware charges.
pub(crate) fn is_accounting(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::Loop { .. }
            | Operator::End
            | Operator::If { .. }
            | Operator::Else
            | Operator::Br { .. }
            | Operator::BrTable { .. }
            | Operator::BrIf { .. }
            | Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::Return
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. }
            | Operator::Delegate { .. }
            | Operator::Catch { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
    )
}

/// cosmwasm-vm's cost function.
pub(crate) fn cost(op: &Operator<'_>) -> u64 {
    if is_accounting(op) {
        GAS_PER_ACCOUNTING_OPERATION
    } else {
        GAS_PER_OPERATION
    }
}

/// Section order of a core module (custom sections excepted), for inserting new sections.
const fn rank(id: u8) -> u8 {
    match id {
        1 => 1,   // type
        2 => 2,   // import
        3 => 3,   // function
        4 => 4,   // table
        5 => 5,   // memory
        13 => 6,  // tag
        6 => 7,   // global
        7 => 8,   // export
        8 => 9,   // start
        9 => 10,  // element
        12 => 11, // data count
        10 => 12, // code
        11 => 13, // data
        _ => 0,   // custom (or unknown, which the parser refuses)
    }
}
const TYPE_ID: u8 = 1;
const FUNCTION_ID: u8 = 3;
const GLOBAL_ID: u8 = 6;
const EXPORT_ID: u8 = 7;
const CODE_ID: u8 = 10;
const TYPE_RANK: u8 = rank(TYPE_ID);
const FUNCTION_RANK: u8 = rank(FUNCTION_ID);
const GLOBAL_RANK: u8 = rank(GLOBAL_ID);
const EXPORT_RANK: u8 = rank(EXPORT_ID);
const CODE_RANK: u8 = rank(CODE_ID);

/// The charging function's type, `[i64] -> []`.
const CHARGE_TYPE: [u8; 4] = [0x60, 0x01, 0x7e, 0x00];

fn leb_u32(out: &mut Vec<u8>, value: u32) {
    value.encode(out);
}

fn section(out: &mut Vec<u8>, id: u8, data: &[u8]) {
    out.push(id);
    (data.len()).encode(out);
    out.extend_from_slice(data);
}

/// The count of a vector section and the bytes of its entries.
fn split_count(wasm: &[u8], range: std::ops::Range<usize>) -> Result<(u32, &[u8]), CheckError> {
    let mut reader = BinaryReader::new(&wasm[range.clone()], range.start);
    let count = reader.read_var_u32()?;
    let entries = &wasm[reader.original_position()..range.end];
    Ok((count, entries))
}

/// The two appended globals: `i64` and `i32`, mutable, initially 0.
fn appended_globals(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x7e, 0x01, 0x42, 0x00, 0x0b]);
    out.extend_from_slice(&[0x7f, 0x01, 0x41, 0x00, 0x0b]);
}

fn appended_exports(out: &mut Vec<u8>, gas_left: u32, exhausted: u32) {
    for (name, index) in [
        (GAS_LEFT_EXPORT, gas_left),
        (GAS_EXHAUSTED_EXPORT, exhausted),
    ] {
        name.encode(out);
        out.push(0x03); // global
        leb_u32(out, index);
    }
}

/// Writes section `id`: the module's own entries (`existing`: their count and bytes, or none
/// when the module lacks the section) followed by `added` entries that `tail` writes.
fn extend_vector(
    out: &mut Vec<u8>,
    id: u8,
    existing: Option<(u32, &[u8])>,
    added: u32,
    tail: impl FnOnce(&mut Vec<u8>),
) {
    let (count, entries) = existing.unwrap_or((0, &[]));
    let mut data = Vec::with_capacity(entries.len() + 64);
    leb_u32(&mut data, count.saturating_add(added));
    data.extend_from_slice(entries);
    tail(&mut data);
    section(out, id, &data);
}

/// Where the injected checks find the counter, the flag and, in [`CheckForm::Call`], the
/// charging function.
#[derive(Clone, Copy)]
struct Checks {
    gas_left: u32,
    exhausted: u32,
    /// The charging function's index, with [`CheckForm::Call`].
    charge: Option<u32>,
}

impl Checks {
    /// The injected check charging `cost`.
    fn emit(&self, out: &mut Vec<u8>, cost: u64) {
        let cost = cost as i64;
        match self.charge {
            Some(charge) => {
                Instruction::I64Const(cost).encode(out);
                Instruction::Call(charge).encode(out);
            }
            None => self.check(out, Instruction::I64Const(cost)),
        }
    }

    /// The check, with `cost` pushing the cost (a constant inline, the parameter in the
    /// charging function).
    fn check(&self, out: &mut Vec<u8>, cost: Instruction<'_>) {
        for instruction in [
            Instruction::GlobalGet(self.gas_left),
            cost.clone(),
            Instruction::I64LtU,
            Instruction::If(wasm_encoder::BlockType::Empty),
            Instruction::I32Const(1),
            Instruction::GlobalSet(self.exhausted),
            Instruction::Unreachable,
            Instruction::End,
            Instruction::GlobalGet(self.gas_left),
            cost,
            Instruction::I64Sub,
            Instruction::GlobalSet(self.gas_left),
        ] {
            instruction.encode(out);
        }
    }

    /// The charging function's body, with its size prefix: the check of its parameter.
    fn charge_body(&self, out: &mut Vec<u8>) {
        let mut body = vec![0]; // no locals
        self.check(&mut body, Instruction::LocalGet(0));
        Instruction::End.encode(&mut body);
        body.len().encode(out);
        out.extend_from_slice(&body);
    }
}

/// One function body with the checks injected (without its size prefix).
fn meter_body(
    wasm: &[u8],
    body: &FunctionBody<'_>,
    checks: Checks,
    out: &mut Vec<u8>,
) -> Result<(), CheckError> {
    let start = body.range().start;
    let mut locals = 0u64;
    for local in body.get_locals_reader()? {
        locals = locals.saturating_add(u64::from(local?.0));
    }
    let mut reader = body.get_operators_reader()?;
    out.extend_from_slice(&wasm[start..reader.original_position()]);

    let charged_locals = locals.saturating_sub(FREE_LOCALS);
    let mut first = true;
    let mut accumulated = 0u64;
    while !reader.eof() {
        let op_start = reader.original_position();
        let op = reader.read()?;
        let op_end = reader.original_position();
        let accounting = is_accounting(&op);
        if first && charged_locals > 0 {
            let locals_cost = GAS_PER_OPERATION.saturating_mul(charged_locals);
            if accounting {
                accumulated = accumulated.saturating_add(locals_cost);
            } else {
                checks.emit(out, locals_cost);
            }
        }
        accumulated = accumulated.saturating_add(cost(&op));
        if accounting {
            checks.emit(out, accumulated);
            accumulated = 0;
        }
        out.extend_from_slice(&wasm[op_start..op_end]);
        first = false;
    }
    Ok(())
}

/// Rewrites `wasm` to meter gas exactly as cosmwasm-vm's middleware does, with the check in
/// `form` (see the module documentation). Refuses a module that already exports
/// [`GAS_LEFT_EXPORT`] or [`GAS_EXHAUSTED_EXPORT`], and bytes that do not parse as a core
/// module.
pub(crate) fn instrument(wasm: &[u8], form: CheckForm) -> Result<Vec<u8>, CheckError> {
    let mut rewrite = Rewrite {
        wasm,
        form,
        out: Vec::with_capacity(wasm.len() + wasm.len() / 2 + 64),
        imported_funcs: 0,
        imported_globals: 0,
        charge_type: None,
        charge: None,
        gas_left: None,
        exports_written: false,
        code: None,
        code_written: false,
    };
    for payload in Parser::new(0).parse_all(wasm) {
        rewrite.payload(payload?)?;
    }
    Ok(rewrite.out)
}

/// One rewrite under way: the output so far, and which appended parts it holds.
struct Rewrite<'a> {
    wasm: &'a [u8],
    form: CheckForm,
    out: Vec<u8>,
    imported_funcs: u32,
    imported_globals: u32,
    /// The charging function's type index, once the type section is written
    /// ([`CheckForm::Call`]).
    charge_type: Option<u32>,
    /// The charging function's index, once the function section is written
    /// ([`CheckForm::Call`]).
    charge: Option<u32>,
    /// The counter's index, once the global section is written.
    gas_left: Option<u32>,
    exports_written: bool,
    /// The metered bodies of the code section and their count, until the section ends.
    code: Option<(u32, Vec<u8>)>,
    code_written: bool,
}

impl Rewrite<'_> {
    fn checks(&self) -> Checks {
        let gas_left = self.gas_left.unwrap_or(0);
        Checks {
            gas_left,
            exhausted: gas_left.wrapping_add(1),
            charge: self.charge,
        }
    }

    /// Writes what must come before a section of rank `rank` (or the end, `u8::MAX`): the
    /// code section that just ended, and each appended section the module lacks.
    fn fill(&mut self, rank: u8) {
        if let Some((count, bodies)) = self.code.take() {
            self.write_code(count, &bodies);
        }
        let call = self.form == CheckForm::Call;
        if call && rank > TYPE_RANK && self.charge_type.is_none() {
            extend_vector(&mut self.out, TYPE_ID, None, 1, |d| {
                d.extend_from_slice(&CHARGE_TYPE)
            });
            self.charge_type = Some(0);
        }
        if call && rank > FUNCTION_RANK && self.charge.is_none() {
            let ty = self.charge_type.unwrap_or(0);
            extend_vector(&mut self.out, FUNCTION_ID, None, 1, |d| leb_u32(d, ty));
            self.charge = Some(self.imported_funcs);
        }
        if rank > GLOBAL_RANK && self.gas_left.is_none() {
            extend_vector(&mut self.out, GLOBAL_ID, None, 2, appended_globals);
            self.gas_left = Some(self.imported_globals);
        }
        if rank > EXPORT_RANK && !self.exports_written {
            let checks = self.checks();
            extend_vector(&mut self.out, EXPORT_ID, None, 2, |d| {
                appended_exports(d, checks.gas_left, checks.exhausted)
            });
            self.exports_written = true;
        }
        if call && rank > CODE_RANK && !self.code_written {
            self.write_code(0, &[]);
        }
    }

    /// The code section: `count` metered bodies, and the charging function's with
    /// [`CheckForm::Call`].
    fn write_code(&mut self, count: u32, bodies: &[u8]) {
        let code = Some((count, bodies));
        match self.form {
            CheckForm::Inline => extend_vector(&mut self.out, CODE_ID, code, 0, |_| {}),
            CheckForm::Call => {
                let checks = self.checks();
                extend_vector(&mut self.out, CODE_ID, code, 1, |d| checks.charge_body(d));
            }
        }
        self.code_written = true;
    }

    fn payload(&mut self, payload: Payload<'_>) -> Result<(), CheckError> {
        let wasm = self.wasm;
        match &payload {
            Payload::Version { encoding, .. } => {
                if *encoding != wasmparser::Encoding::Module {
                    return Err(CheckError::NotAModule);
                }
                self.out.extend_from_slice(&wasm[..8.min(wasm.len())]);
                return Ok(());
            }
            Payload::CodeSectionEntry(body) => {
                let checks = self.checks();
                let (count, code) = self.code.get_or_insert_with(|| (0, Vec::new()));
                let mut function = Vec::with_capacity(body.range().len() * 3 / 2);
                meter_body(wasm, body, checks, &mut function)?;
                if function.len() > MAX_FUNCTION_BODY_BYTES {
                    return Err(CheckError::MeteredBodyTooLarge {
                        index: *count,
                        size: function.len(),
                        limit: MAX_FUNCTION_BODY_BYTES,
                    });
                }
                function.len().encode(code);
                code.extend_from_slice(&function);
                *count = count.saturating_add(1);
                return Ok(());
            }
            Payload::End(_) => {
                self.fill(u8::MAX);
                return Ok(());
            }
            _ => {}
        }
        let Some((id, range)) = payload.as_section() else {
            return Ok(());
        };
        let rank = rank(id);
        self.fill(rank);
        let call = self.form == CheckForm::Call;
        match payload {
            Payload::TypeSection(reader) if call => {
                let mut types = 0u32;
                for group in reader.clone() {
                    let len = u32::try_from(group?.types().len()).unwrap_or(u32::MAX);
                    types = types.saturating_add(len);
                }
                let existing = split_count(wasm, range)?;
                extend_vector(&mut self.out, TYPE_ID, Some(existing), 1, |d| {
                    d.extend_from_slice(&CHARGE_TYPE)
                });
                self.charge_type = Some(types);
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import?.ty {
                        TypeRef::Func(_) => {
                            self.imported_funcs = self.imported_funcs.saturating_add(1);
                        }
                        TypeRef::Global(_) => {
                            self.imported_globals = self.imported_globals.saturating_add(1);
                        }
                        _ => {}
                    }
                }
                section(&mut self.out, id, &wasm[range]);
            }
            Payload::FunctionSection(reader) if call => {
                let (count, entries) = split_count(wasm, range)?;
                let ty = self.charge_type.unwrap_or(0);
                extend_vector(&mut self.out, FUNCTION_ID, Some((count, entries)), 1, |d| {
                    leb_u32(d, ty)
                });
                self.charge = Some(self.imported_funcs.saturating_add(reader.count()));
            }
            Payload::GlobalSection(reader) => {
                let existing = split_count(wasm, range)?;
                extend_vector(
                    &mut self.out,
                    GLOBAL_ID,
                    Some(existing),
                    2,
                    appended_globals,
                );
                self.gas_left = Some(self.imported_globals.saturating_add(reader.count()));
            }
            Payload::ExportSection(reader) => {
                for export in reader.clone() {
                    let name = export?.name;
                    if name == GAS_LEFT_EXPORT || name == GAS_EXHAUSTED_EXPORT {
                        return Err(CheckError::ReservedExport {
                            name: name.to_string(),
                        });
                    }
                }
                let existing = split_count(wasm, range)?;
                let checks = self.checks();
                extend_vector(&mut self.out, EXPORT_ID, Some(existing), 2, |d| {
                    appended_exports(d, checks.gas_left, checks.exhausted)
                });
                self.exports_written = true;
            }
            // The bodies follow, one payload each; the section is written when it ends.
            Payload::CodeSectionStart { .. } => self.code = Some((0, Vec::new())),
            _ => section(&mut self.out, id, &wasm[range]),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arbitrary::{Arbitrary, Unstructured};
    use wasmtime::{Engine, Instance, Linker, Module, Store, Val};

    use super::*;
    use crate::check::tests::{bytes, corpus};
    use crate::check::{check_wasm, configure_engine};

    /// Every capability the corpus contracts require.
    fn capabilities() -> std::collections::BTreeSet<String> {
        ["1_1", "1_2", "1_3", "1_4", "2_0", "2_1", "2_2"]
            .into_iter()
            .map(|v| format!("cosmwasm_{v}"))
            .chain(["iterator", "staking", "stargate"].map(String::from))
            .collect()
    }

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        configure_engine(&mut config);
        Engine::new(&config).expect("engine")
    }

    fn validate(wasm: &[u8]) {
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(wasm)
            .expect("the instrumented module validates");
    }

    const FORMS: [CheckForm; 2] = [CheckForm::Inline, CheckForm::Call];

    /// An instance of `wasm` instrumented in `form` (imports trap).
    fn instance(engine: &Engine, wasm: &[u8], form: CheckForm) -> (Store<()>, Instance) {
        let metered = instrument(wasm, form).expect("instrument");
        validate(&metered);
        let module = Module::new(engine, &metered).expect("compiles");
        let mut linker = Linker::new(engine);
        linker
            .define_unknown_imports_as_traps(&module)
            .expect("stub imports");
        let mut store = Store::new(engine, ());
        let instance = linker
            .instantiate(&mut store, &module)
            .expect("instantiates");
        (store, instance)
    }

    /// What a call leaves: its results (or the trap), the counter and the exhaustion flag.
    struct Outcome {
        results: Result<Vec<i64>, String>,
        left: u64,
        exhausted: i32,
    }

    fn call(
        store: &mut Store<()>,
        instance: &Instance,
        name: &str,
        args: &[Val],
        limit: u64,
    ) -> Outcome {
        let left = instance
            .get_global(&mut *store, GAS_LEFT_EXPORT)
            .expect("counter");
        let flag = instance
            .get_global(&mut *store, GAS_EXHAUSTED_EXPORT)
            .expect("flag");
        left.set(&mut *store, Val::I64(limit as i64)).expect("set");
        flag.set(&mut *store, Val::I32(0)).expect("reset");
        let func = instance.get_func(&mut *store, name).expect("export");
        let mut results = vec![Val::I32(0); func.ty(&*store).results().len()];
        let results = func
            .call(&mut *store, args, &mut results)
            .map(|()| {
                results
                    .iter()
                    .map(|v| v.i64().or(v.i32().map(i64::from)).unwrap_or(0))
                    .collect()
            })
            // The cause alone: the backtrace differs between the forms.
            .map_err(|e| e.root_cause().to_string());
        Outcome {
            results,
            left: left.get(&mut *store).i64().expect("i64") as u64,
            exhausted: flag.get(&mut *store).i32().expect("i32"),
        }
    }

    /// Gas used by `name(args)` with a large limit, and its results: the same in both forms.
    fn gas(wat: &str, name: &str, args: &[Val]) -> (u64, Vec<i64>) {
        let engine = engine();
        let [inline, call_form] = FORMS.map(|form| {
            let (mut store, instance) = instance(&engine, &wat::parse_str(wat).unwrap(), form);
            let limit = 1_000_000_000;
            let out = call(&mut store, &instance, name, args, limit);
            assert_eq!(out.exhausted, 0);
            (limit - out.left, out.results.expect("the call returns"))
        });
        assert_eq!(inline, call_form, "the two forms differ");
        inline
    }

    const OP: u64 = GAS_PER_OPERATION;
    const ACC: u64 = GAS_PER_ACCOUNTING_OPERATION;

    #[test]
    fn the_cost_function_is_cosmwasm_vms() {
        assert_eq!(cost(&Operator::Br { relative_depth: 3 }), 1610);
        assert_eq!(cost(&Operator::Return), 1610);
        assert_eq!(cost(&Operator::I64Const { value: 7 }), 115);
        assert_eq!(cost(&Operator::I64Extend8S), 115);
        assert_eq!(
            cost(&Operator::Block {
                blockty: wasmparser::BlockType::Empty
            }),
            115
        );
    }

    #[test]
    fn straight_line_code_is_charged_at_the_end() {
        let wat = r#"(module (func (export "f") (result i32) i32.const 1 i32.const 2 i32.add))"#;
        assert_eq!(gas(wat, "f", &[]), (3 * OP + ACC, vec![3]));
    }

    #[test]
    fn a_loop_is_charged_per_iteration() {
        let wat = r#"(module (func (export "f") (param $n i32) (result i32)
            (loop $l
              local.get $n
              i32.const 1
              i32.sub
              local.tee $n
              br_if $l)
            local.get $n))"#;
        for n in [1u64, 5, 100] {
            // loop; n x (4 ops + br_if); the loop's end; local.get + the function's end.
            let expected = ACC + n * (4 * OP + ACC) + ACC + (OP + ACC);
            assert_eq!(
                gas(wat, "f", &[Val::I32(n as i32)]),
                (expected, vec![0]),
                "n={n}"
            );
        }
    }

    #[test]
    fn br_table_skips_the_checks_it_jumps_over() {
        let wat = r#"(module (func (export "f") (param i32) (result i32)
            (block $a
              (block $b
                local.get 0
                br_table $a $b $a)
              i32.const 20
              drop
              i32.const 20
              return)
            i32.const 10))"#;
        let head = 3 * OP + ACC; // block, block, local.get, br_table
        // To $b: past the inner end's check; three ops and return.
        assert_eq!(
            gas(wat, "f", &[Val::I32(1)]),
            (head + 3 * OP + ACC, vec![20])
        );
        // To $a (index 0 and the default): past the outer end's check; const and the end.
        assert_eq!(gas(wat, "f", &[Val::I32(0)]), (head + OP + ACC, vec![10]));
        assert_eq!(gas(wat, "f", &[Val::I32(7)]), (head + OP + ACC, vec![10]));
    }

    #[test]
    fn if_and_else_are_charged_on_the_path_taken() {
        let wat = r#"(module (func (export "f") (param i32) (result i32)
            local.get 0
            if (result i32)
              i32.const 1
            else
              i32.const 2
              i32.const 3
              drop
            end))"#;
        let head = OP + ACC;
        assert_eq!(
            gas(wat, "f", &[Val::I32(1)]),
            (head + (OP + ACC) + ACC, vec![1])
        );
        assert_eq!(
            gas(wat, "f", &[Val::I32(0)]),
            (head + (3 * OP + ACC) + ACC, vec![2])
        );
    }

    #[test]
    fn calls_are_accounting_points_and_callees_are_metered() {
        let wat = r#"(module
            (func $g (result i32) i32.const 7)
            (func (export "f") (result i32) call $g i32.const 1 i32.add))"#;
        assert_eq!(
            gas(wat, "f", &[]),
            (ACC + (OP + ACC) + (2 * OP + ACC), vec![8])
        );
    }

    #[test]
    fn locals_beyond_29_are_charged_at_the_start() {
        let func = |name: &str, locals: usize, body: &str| {
            format!(
                r#"(func (export "{name}") (local {}) {body})"#,
                "i64 ".repeat(locals)
            )
        };
        let wat = format!(
            "(module {} {} {} {})",
            func("free", 29, "i32.const 0 drop"),
            func("one", 30, "i32.const 0 drop"),
            func("two", 31, "i32.const 0 drop"),
            func("first_accounting", 31, ""),
        );
        assert_eq!(gas(&wat, "free", &[]).0, 2 * OP + ACC);
        assert_eq!(gas(&wat, "one", &[]).0, OP + 2 * OP + ACC);
        assert_eq!(gas(&wat, "two", &[]).0, 2 * OP + 2 * OP + ACC);
        assert_eq!(gas(&wat, "first_accounting", &[]).0, 2 * OP + ACC);
    }

    #[test]
    fn exhaustion_at_the_boundary_traps_and_keeps_the_counter() {
        let engine = engine();
        let wat = r#"(module (func (export "f") (param $n i32)
            (loop $l
              local.get $n
              i32.const 1
              i32.sub
              local.tee $n
              br_if $l)))"#;
        for form in FORMS {
            let (mut store, instance) = instance(&engine, &wat::parse_str(wat).unwrap(), form);
            let n = 5;
            let used = ACC + n * (4 * OP + ACC) + ACC + ACC;
            let out = call(&mut store, &instance, "f", &[Val::I32(n as i32)], used);
            assert_eq!((out.left, out.exhausted), (0, 0), "{form:?}");
            assert!(out.results.is_ok(), "{form:?}");

            // One less: the last check (the function's end, 1,610) fails with 1,609 left, and
            // the counter keeps them.
            let out = call(&mut store, &instance, "f", &[Val::I32(n as i32)], used - 1);
            assert_eq!((out.left, out.exhausted), (ACC - 1, 1), "{form:?}");
            assert!(out.results.unwrap_err().contains("unreachable"), "{form:?}");

            // Nothing at all: the first check fails.
            let out = call(&mut store, &instance, "f", &[Val::I32(n as i32)], 0);
            assert_eq!((out.left, out.exhausted), (0, 1), "{form:?}");
        }
    }

    #[test]
    fn existing_globals_keep_their_indices() {
        let wat = r#"(module
            (import "env" "g" (global i32))
            (global $own (mut i32) (i32.const 5))
            (func (export "bump") (result i32)
              global.get $own
              i32.const 1
              i32.add
              global.set $own
              global.get $own))"#;
        for form in FORMS {
            globals_keep_their_indices(wat, form);
        }
    }

    fn globals_keep_their_indices(wat: &str, form: CheckForm) {
        let metered = instrument(&wat::parse_str(wat).unwrap(), form).unwrap();
        validate(&metered);
        let engine = engine();
        let module = Module::new(&engine, &metered).unwrap();
        let mut store = Store::new(&engine, ());
        let imported = wasmtime::Global::new(
            &mut store,
            wasmtime::GlobalType::new(wasmtime::ValType::I32, wasmtime::Mutability::Const),
            Val::I32(9),
        )
        .unwrap();
        let instance = Instance::new(&mut store, &module, &[imported.into()]).unwrap();
        let out = call(&mut store, &instance, "bump", &[], 10_000);
        assert_eq!(out.results, Ok(vec![6]));
        assert_eq!(10_000 - out.left, 5 * OP + ACC);
        // The counter is the last global but one: 1 imported + 1 own.
        let mut exports = Vec::new();
        for payload in Parser::new(0).parse_all(&metered) {
            if let Payload::ExportSection(reader) = payload.unwrap() {
                for export in reader {
                    let export = export.unwrap();
                    exports.push((export.name.to_string(), export.index));
                }
            }
        }
        assert!(exports.contains(&(GAS_LEFT_EXPORT.to_string(), 2)));
        assert!(exports.contains(&(GAS_EXHAUSTED_EXPORT.to_string(), 3)));
    }

    #[test]
    fn modules_without_global_or_export_sections_get_them() {
        for wat in [
            "(module)",
            r#"(module (memory 1) (data (i32.const 0) "abc") (func (export "f")) (@custom "x" "y"))"#,
            // Sections the call form appends to: types and functions without a code section
            // after them, and a data count section before the code.
            r#"(module (type (func)) (import "env" "f" (func)) (memory 1) (export "m" (memory 0)))"#,
            r#"(module (memory 1) (func (export "f") (data.drop 0)) (data "abc"))"#,
        ] {
            for form in FORMS {
                let (mut store, instance) =
                    instance(&engine(), &wat::parse_str(wat).unwrap(), form);
                assert!(
                    instance.get_global(&mut store, GAS_LEFT_EXPORT).is_some(),
                    "{wat}"
                );
                assert!(
                    instance
                        .get_global(&mut store, GAS_EXHAUSTED_EXPORT)
                        .is_some(),
                    "{wat}"
                );
            }
        }
        // A start function is metered too: it runs at instantiation, while the counter is
        // still 0, and runs out of gas (in cosmwasm-vm as well, whose counter starts at 0).
        let wasm = wat::parse_str("(module (func) (start 0))").unwrap();
        for form in FORMS {
            let metered = instrument(&wasm, form).unwrap();
            validate(&metered);
            let engine = engine();
            let module = Module::new(&engine, &metered).unwrap();
            let mut store = Store::new(&engine, ());
            let err = Instance::new(&mut store, &module, &[]).unwrap_err();
            assert_eq!(
                err.downcast_ref::<wasmtime::Trap>(),
                Some(&wasmtime::Trap::UnreachableCodeReached)
            );
        }
    }

    #[test]
    fn reserved_export_names_and_components_are_refused() {
        for form in FORMS {
            for name in [GAS_LEFT_EXPORT, GAS_EXHAUSTED_EXPORT] {
                let wasm = wat::parse_str(format!(r#"(module (func (export "{name}")))"#)).unwrap();
                assert_eq!(
                    instrument(&wasm, form).unwrap_err().to_string(),
                    format!("module already exports \"{name}\", a name the gas metering reserves")
                );
            }
            let component = wat::parse_str("(component)").unwrap();
            assert_eq!(
                instrument(&component, form).unwrap_err().to_string(),
                "not a core wasm module"
            );
            assert!(instrument(b"\0asm\x01\0\0\0\x01", form).is_err());
        }
    }

    #[test]
    fn a_body_that_outgrows_the_size_limit_is_refused() {
        // 400,000 nested blocks: 2 bytes each for `block` and 1 for `end` in the input
        // (1.2 MB), about 26 bytes more per `end` with its check.
        let depth = 400_000;
        let mut body = Vec::new();
        body.push(0); // no locals
        for _ in 0..depth {
            body.extend_from_slice(&[0x02, 0x40]);
        }
        body.extend(std::iter::repeat_n(0x0b, depth + 1));
        let mut code = Vec::new();
        1u32.encode(&mut code);
        body.len().encode(&mut code);
        code.extend_from_slice(&body);
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        section(&mut wasm, 1, &[1, 0x60, 0, 0]);
        section(&mut wasm, 3, &[1, 0]);
        section(&mut wasm, CODE_ID, &code);
        validate(&wasm);
        let err = instrument(&wasm, CheckForm::Inline).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("function 0 is too large once gas metering is added ("),
            "{err}"
        );
    }

    #[test]
    fn the_corpus_contracts_are_instrumented_and_run() {
        let engine = engine();
        for name in ["cosmwasm-hackatom.wasm", "cosmwasm-cyberpunk.wasm"] {
            let Some(wasm) = corpus(name) else { continue };
            check_wasm(&wasm, &capabilities()).expect("passes the checks");
            let mut lefts = Vec::new();
            for form in FORMS {
                let (mut store, instance) = instance(&engine, &wasm, form);
                // A function without branches: the sum of its operators' costs.
                let out = call(&mut store, &instance, "interface_version_8", &[], 10_000);
                let expected = straight_line_cost(&wasm, "interface_version_8");
                assert_eq!((10_000 - out.left, out.exhausted), (expected, 0), "{name}");
                let out = call(
                    &mut store,
                    &instance,
                    "allocate",
                    &[Val::I32(100)],
                    10_000_000,
                );
                assert_eq!(out.exhausted, 0, "{name}");
                assert!(out.results.is_ok(), "{name}");
                assert!(out.left < 10_000_000 - ACC, "{name}");
                // Too little gas for allocate: trapped by the metering, flag set.
                let short = call(&mut store, &instance, "allocate", &[Val::I32(100)], 2_000);
                assert_eq!(short.exhausted, 1, "{name}");
                lefts.push((out.left, out.results, short.left));
            }
            assert_eq!(lefts[0], lefts[1], "{name}: the two forms differ");
        }
    }

    const ENV: &str = r#"{"block":{"height":12345,"time":"1571797419879305533","chain_id":"cosmos-testnet-14002"},"transaction":{"index":3},"contract":{"address":"cosmwasm14hj2tavq8fpesdwxxcu44rty3hh90vhujrvcmstl4zr3txmfvw9s4hmalr"}}"#;
    const INFO: &str = r#"{"sender":"cosmwasm1pgm8hyk0pvphmlvfjc8wsvk4daluz5tgrw6pu5mfpemk74uxnx9qwrtv4f","funds":[]}"#;

    /// cosmwasm-vm's `call_raw` on one instance with one gas counter: `allocate` and a host
    /// write per argument, the entry point, a host read of its result and `deallocate`. The
    /// host's region writes and read are charged as cosmwasm-vm's `write_region` and
    /// `read_region` charge them (`GasConfig`'s defaults); the imports trap, so the rest is the
    /// metering's. Returns the gas used and the result, or `None` when gas ran out.
    /// Both forms give the same.
    fn call_raw(wasm: &[u8], entry: &str, args: &[&str], limit: u64) -> Option<(u64, String)> {
        let engine = engine();
        let inline = call_raw_on(&engine, wasm, CheckForm::Inline, entry, args, limit);
        let call = call_raw_on(&engine, wasm, CheckForm::Call, entry, args, limit);
        assert_eq!(inline, call, "the two forms differ");
        inline
    }

    fn call_raw_on(
        engine: &Engine,
        wasm: &[u8],
        form: CheckForm,
        entry: &str,
        args: &[&str],
        limit: u64,
    ) -> Option<(u64, String)> {
        let (mut store, instance) = instance(engine, wasm, form);
        let left = instance.get_global(&mut store, GAS_LEFT_EXPORT).unwrap();
        left.set(&mut store, Val::I64(limit as i64)).unwrap();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let allocate = instance
            .get_typed_func::<u32, u32>(&mut store, "allocate")
            .unwrap();
        let region = |store: &mut Store<()>, ptr: u32| {
            let mut raw = [0u8; 12];
            memory.read(&mut *store, ptr as usize, &mut raw).unwrap();
            let word = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().unwrap());
            (word(0), word(4), word(8))
        };
        let config = crate::gas::GasConfig::default();
        let charge = |store: &mut Store<()>, cost: u64| {
            let now = left.get(&mut *store).i64().unwrap() as u64;
            let rest = now.checked_sub(cost)?;
            left.set(&mut *store, Val::I64(rest as i64)).unwrap();
            Some(())
        };
        let mut ptrs = Vec::new();
        for arg in args {
            let ptr = allocate.call(&mut store, arg.len() as u32).ok()?;
            charge(
                &mut store,
                config.write_region_cost.total_cost(arg.len() as u64)?,
            )?;
            let (offset, capacity, _) = region(&mut store, ptr);
            assert!(capacity as usize >= arg.len());
            memory
                .write(&mut store, offset as usize, arg.as_bytes())
                .unwrap();
            memory
                .write(
                    &mut store,
                    ptr as usize + 8,
                    &(arg.len() as u32).to_le_bytes(),
                )
                .unwrap();
            ptrs.push(Val::I32(ptr as i32));
        }
        let func = instance.get_func(&mut store, entry).unwrap();
        let mut result = [Val::I32(0)];
        func.call(&mut store, &ptrs, &mut result).ok()?;
        let ptr = result[0].i32().unwrap() as u32;
        let (offset, _, length) = region(&mut store, ptr);
        charge(&mut store, config.read_region_cost(length as usize)?)?;
        let mut data = vec![0u8; length as usize];
        memory.read(&store, offset as usize, &mut data).unwrap();
        let deallocate = instance
            .get_typed_func::<u32, ()>(&mut store, "deallocate")
            .unwrap();
        deallocate.call(&mut store, ptr).ok()?;
        let left = left.get(&mut store).i64().unwrap() as u64;
        Some((limit - left, String::from_utf8(data).unwrap()))
    }

    #[test]
    fn a_small_contract_uses_the_gas_cosmwasm_vm_reports() {
        // A bump allocator; `query` runs a loop 5 times and a br_table; `execute` declares 31
        // locals. Gas measured with cosmwasm-vm 3.0.10 as in the corpus test below.
        let wasm = wat::parse_str(
            r#"(module
              (memory (export "memory") 1)
              (global $next (mut i32) (i32.const 1024))
              (func (export "interface_version_8"))
              (func $allocate (export "allocate") (param $size i32) (result i32)
                (local $r i32)
                global.get $next
                local.set $r
                local.get $r
                local.get $r
                i32.const 12
                i32.add
                i32.store
                local.get $r
                local.get $size
                i32.store offset=4
                local.get $r
                i32.const 0
                i32.store offset=8
                local.get $r
                i32.const 12
                i32.add
                local.get $size
                i32.add
                global.set $next
                local.get $r)
              (func (export "deallocate") (param i32))
              (func (export "query") (param i32 i32) (result i32)
                (local $n i32)
                i32.const 5
                local.set $n
                (loop $l
                  local.get $n
                  i32.const 1
                  i32.sub
                  local.tee $n
                  br_if $l)
                (block $a
                  (block $b
                    i32.const 1
                    br_table $a $b $a)
                  nop)
                i32.const 0
                call $allocate)
              (func (export "execute") (param i32 i32 i32) (result i32)
                (local i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64
                       i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64)
                i32.const 0
                call $allocate))"#,
        )
        .unwrap();
        let limit = 500_000_000_000;
        let (used, result) = call_raw(&wasm, "query", &[ENV, "{}"], limit).unwrap();
        assert_eq!((used, result.as_str()), (813_855, ""));
        let (used, _) = call_raw(&wasm, "execute", &[ENV, INFO, "{}"], limit).unwrap();
        assert_eq!(used, 1_082_385);
    }

    #[test]
    fn corpus_calls_use_the_gas_cosmwasm_vm_reports() {
        // Measured with cosmwasm-vm 3.0.10 (Instance::from_code with the mock backend,
        // call_query_raw / call_execute_raw, the same env and info bytes): these calls run no
        // import, so every unit of their gas is the metering's.
        let limit = 500_000_000_000;
        if let Some(wasm) = corpus("cosmwasm-hackatom.wasm") {
            let (used, result) =
                call_raw(&wasm, "query", &[ENV, r#"{"get_int":{}}"#], limit).unwrap();
            assert_eq!(result, r#"{"ok":"eyJpbnQiOjE1NzMxNjI2fQ=="}"#);
            assert_eq!(used, 6_294_235);
        }
        if let Some(wasm) = corpus("cosmwasm-cyberpunk.wasm") {
            let (used, result) =
                call_raw(&wasm, "query", &[ENV, r#"{"mirror_env":{}}"#], limit).unwrap();
            assert!(result.starts_with(r#"{"ok":"eyJibG9jayI6eyJoZWlnaHQiOjEyMzQ1"#));
            assert_eq!(used, 18_545_285);
            let noop = [ENV, INFO, r#"{"noop":{}}"#];
            let (used, result) = call_raw(&wasm, "execute", &noop, limit).unwrap();
            assert_eq!(
                result,
                r#"{"ok":{"messages":[],"attributes":[],"events":[],"data":null}}"#
            );
            assert_eq!(used, 9_786_460);
            // The exact limit suffices; one less runs out.
            assert_eq!(call_raw(&wasm, "execute", &noop, used).unwrap().0, used);
            assert!(call_raw(&wasm, "execute", &noop, used - 1).is_none());
            // The same gas on the Winch tier: the metering is in the bytecode.
            let mut config = wasmtime::Config::new();
            config.strategy(wasmtime::Strategy::Winch);
            configure_engine(&mut config);
            let winch = Engine::new(&config).unwrap();
            for form in FORMS {
                assert_eq!(
                    call_raw_on(&winch, &wasm, form, "execute", &noop, limit)
                        .unwrap()
                        .0,
                    used
                );
                let short = call_raw_on(&winch, &wasm, form, "execute", &noop, used - 1);
                assert!(short.is_none());
            }
            let (used, _) = call_raw(
                &wasm,
                "execute",
                &[ENV, INFO, r#"{"mirror_env":{}}"#],
                limit,
            )
            .unwrap();
            assert_eq!(used, 21_040_790);
            let argon2 = r#"{"argon2":{"mem_cost":64,"time_cost":2}}"#;
            let (used, result) = call_raw(&wasm, "execute", &[ENV, INFO, argon2], limit).unwrap();
            assert!(result.contains(r#""data":"JGFyZ29uMmkkdj0xOSRtPTY0LHQ9MixwPTQk"#));
            assert_eq!(used, 1_568_590_155);
        }
    }

    /// The summed cost of the operators of the exported function `name` of `wasm`.
    fn straight_line_cost(wasm: &[u8], name: &str) -> u64 {
        let mut imported = 0;
        let mut index = None;
        let mut bodies = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.unwrap() {
                Payload::ImportSection(r) => {
                    imported = r
                        .into_imports()
                        .filter(|i| matches!(i.as_ref().unwrap().ty, TypeRef::Func(_)))
                        .count();
                }
                Payload::ExportSection(r) => {
                    for e in r {
                        let e = e.unwrap();
                        if e.name == name {
                            index = Some(e.index as usize);
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => bodies.push(body),
                _ => {}
            }
        }
        let body = &bodies[index.expect("exported") - imported];
        body.get_operators_reader()
            .unwrap()
            .into_iter()
            .map(|op| cost(&op.unwrap()))
            .sum()
    }

    #[test]
    fn every_module_wasm_smith_makes_is_instrumented_into_a_valid_module() {
        let mut instrumented = 0;
        for seed in 0..300 {
            let data = bytes(seed, 4096);
            let mut u = Unstructured::new(&data);
            let Ok(mut config) = wasm_smith::Config::arbitrary(&mut u) else {
                continue;
            };
            config.max_funcs = config.max_funcs.min(20);
            config.max_instructions = config.max_instructions.min(300);
            let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
                continue;
            };
            let wasm = module.to_bytes();
            // The checks never panic; most of these modules fail them.
            let _ = check_wasm(&wasm, &capabilities());
            let exports_reserved = wasmparser::Parser::new(0).parse_all(&wasm).any(|p| {
                matches!(p, Ok(Payload::ExportSection(r)) if r.clone().into_iter().any(|e| {
                    e.is_ok_and(|e| e.name == GAS_LEFT_EXPORT || e.name == GAS_EXHAUSTED_EXPORT)
                }))
            });
            if exports_reserved {
                continue;
            }
            for form in FORMS {
                let metered = instrument(&wasm, form).expect("a valid module is instrumented");
                validate(&metered);
            }
            instrumented += 1;
        }
        assert!(instrumented > 100, "only {instrumented} modules generated");
    }

    /// A wasm-smith module shaped like a contract (the exports a contract has, `env` imports,
    /// one memory) within what the engine runs, or `None`.
    fn smith_contract(data: &[u8]) -> Option<Vec<u8>> {
        let mut u = Unstructured::new(data);
        let mut config = wasm_smith::Config::arbitrary(&mut u).ok()?;
        config.available_imports = Some(
            wat::parse_str(
                r#"(module
                  (import "env" "db_read" (func (param i32) (result i32)))
                  (import "env" "debug" (func (param i32)))
                  (import "env" "abort" (func (param i32))))"#,
            )
            .ok()?,
        );
        config.exports = Some(
            wat::parse_str(
                r#"(module
                  (func (export "interface_version_8") unreachable)
                  (func (export "allocate") (param i32) (result i32) unreachable)
                  (func (export "deallocate") (param i32) unreachable)
                  (func (export "run") (result i32) unreachable))"#,
            )
            .ok()?,
        );
        config.min_memories = 1;
        config.max_memories = 1;
        config.max_tables = config.max_tables.min(1);
        config.memory64_enabled = false;
        config.max_memory32_bytes = 1 << 20;
        config.simd_enabled = false;
        config.relaxed_simd_enabled = false;
        config.threads_enabled = false;
        config.shared_everything_threads_enabled = false;
        config.exceptions_enabled = false;
        config.gc_enabled = false;
        config.tail_call_enabled = false;
        config.custom_page_sizes_enabled = false;
        config.custom_descriptors_enabled = false;
        config.wide_arithmetic_enabled = false;
        config.extended_const_enabled = false;
        config.max_funcs = config.max_funcs.min(10);
        config.max_instructions = config.max_instructions.min(100);
        let module = wasm_smith::Module::new(config, &mut u).ok()?;
        Some(module.to_bytes())
    }

    /// A fresh instance of the metered module, or `None` when it does not instantiate (a data
    /// segment out of bounds, a start function that runs out of gas, ...).
    fn try_instance(engine: &Engine, module: &Module) -> Option<(Store<()>, Instance)> {
        let mut linker = Linker::new(engine);
        linker.define_unknown_imports_as_traps(module).ok()?;
        let mut store = Store::new(engine, ());
        let instance = linker.instantiate(&mut store, module).ok()?;
        Some((store, instance))
    }

    /// What [`run_out`] observed: the gas used, the results, and the counter left by a limit
    /// one short of it.
    type RunOut = (u64, Result<Vec<i64>, String>, Option<u64>);

    /// Runs `run` of `wasm` metered in `form` with a large limit, then with the gas it used
    /// (U) as the limit, which must run it the same way and leave 0, then with U - 1, which
    /// must run out, set the flag and trap. `None` when the module does not compile or
    /// instantiate, or runs out with the large limit.
    fn run_out(engine: &Engine, wasm: &[u8], form: CheckForm, seed: u64) -> Option<RunOut> {
        let metered = instrument(wasm, form).expect("a valid module is instrumented");
        validate(&metered);
        let module = Module::new(engine, &metered).ok()?;
        let limit = 50_000_000;
        let (mut store, instance) = try_instance(engine, &module)?;
        let first = call(&mut store, &instance, "run", &[], limit);
        if first.exhausted == 1 {
            return None;
        }
        let used = limit - first.left;
        let (mut store, instance) = try_instance(engine, &module).expect("again");
        let exact = call(&mut store, &instance, "run", &[], used);
        assert_eq!(exact.results, first.results, "seed {seed}");
        assert_eq!((exact.left, exact.exhausted), (0, 0), "seed {seed}");
        let mut short_left = None;
        if used > 0 {
            let (mut store, instance) = try_instance(engine, &module).expect("again");
            let short = call(&mut store, &instance, "run", &[], used - 1);
            assert_eq!(short.exhausted, 1, "seed {seed}");
            assert!(short.results.is_err(), "seed {seed}");
            assert!(
                short.left < GAS_PER_ACCOUNTING_OPERATION * 1000,
                "seed {seed}"
            );
            short_left = Some(short.left);
        }
        Some((used, first.results, short_left))
    }

    #[test]
    fn generated_contracts_run_out_exactly_one_gas_short() {
        // For each generated contract that runs, in both forms: the gas it used as a limit
        // runs it the same way, one less runs out; and the two forms agree on everything.
        let engine = engine();
        let (mut checked, mut overflows) = (0, 0);
        for seed in 0..400u64 {
            let Some(wasm) = smith_contract(&bytes(seed, 2048)) else {
                continue;
            };
            let _ = check_wasm(&wasm, &capabilities());
            let inline = run_out(&engine, &wasm, CheckForm::Inline, seed);
            let call = run_out(&engine, &wasm, CheckForm::Call, seed);
            // The one known difference: the depth at which the stack runs out (the call
            // form's frames differ), so the gas used until then, or whether the gas or the
            // stack runs out first.
            let overflow = |r: &Option<RunOut>| {
                let stack = wasmtime::Trap::StackOverflow.to_string();
                matches!(r, Some((_, Err(trap), _)) if *trap == stack)
            };
            if overflow(&inline) || overflow(&call) {
                overflows += 1;
                continue;
            }
            assert_eq!(inline, call, "seed {seed}: the two forms differ");
            if inline.is_some() {
                checked += 1;
            }
        }
        assert!(
            checked > 50,
            "only {checked} contracts ran ({overflows} overflowed)"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        for seed in 0..2000 {
            let mut data = bytes(seed, (seed % 300) as usize);
            if seed % 2 == 0 {
                let header = b"\0asm\x01\0\0\0";
                data.splice(0..0, header.iter().copied());
            }
            let _ = check_wasm(&data, &capabilities());
            for form in FORMS {
                let _ = instrument(&data, form);
            }
        }
    }
}
