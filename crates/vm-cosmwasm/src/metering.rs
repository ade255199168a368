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

use wasm_encoder::{Encode, Instruction};
use wasmparser::{BinaryReader, FunctionBody, Operator, Parser, Payload, TypeRef};

use crate::check::CheckError;

/// The export name of the gas counter (`i64` global, read as `u64`).
pub(crate) const GAS_LEFT_EXPORT: &str = "cw_gas_left";
/// The export name of the exhaustion flag (`i32` global: 1 once a check ran out).
pub(crate) const GAS_EXHAUSTED_EXPORT: &str = "cw_gas_exhausted";
/// The version of this rewrite, for cache keys: change it whenever the output changes.
pub(crate) const METERING_VERSION: u32 = 1;

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
fn rank(id: u8) -> u8 {
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
const GLOBAL_RANK: u8 = 7;
const EXPORT_RANK: u8 = 8;
const GLOBAL_ID: u8 = 6;
const EXPORT_ID: u8 = 7;
const CODE_ID: u8 = 10;

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
    for (name, index) in [(GAS_LEFT_EXPORT, gas_left), (GAS_EXHAUSTED_EXPORT, exhausted)] {
        name.encode(out);
        out.push(0x03); // global
        leb_u32(out, index);
    }
}

/// Writes the global section with the two globals appended to `entries` (the module's own,
/// if any) and returns the counter's index.
fn write_globals(
    out: &mut Vec<u8>,
    imported: u32,
    defined: u32,
    entries: Option<(u32, &[u8])>,
) -> u32 {
    let mut data = Vec::new();
    let (count, raw) = entries.unwrap_or((0, &[]));
    leb_u32(&mut data, count.saturating_add(2));
    data.extend_from_slice(raw);
    appended_globals(&mut data);
    section(out, GLOBAL_ID, &data);
    imported.saturating_add(defined)
}

/// The injected check charging `cost`.
fn check(out: &mut Vec<u8>, gas_left: u32, exhausted: u32, cost: u64) {
    let cost = cost as i64;
    for instruction in [
        Instruction::GlobalGet(gas_left),
        Instruction::I64Const(cost),
        Instruction::I64LtU,
        Instruction::If(wasm_encoder::BlockType::Empty),
        Instruction::I32Const(1),
        Instruction::GlobalSet(exhausted),
        Instruction::Unreachable,
        Instruction::End,
        Instruction::GlobalGet(gas_left),
        Instruction::I64Const(cost),
        Instruction::I64Sub,
        Instruction::GlobalSet(gas_left),
    ] {
        instruction.encode(out);
    }
}

/// One function body with the checks injected (without its size prefix).
fn meter_body(
    wasm: &[u8],
    body: &FunctionBody<'_>,
    gas_left: u32,
    exhausted: u32,
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
                check(out, gas_left, exhausted, locals_cost);
            }
        }
        accumulated = accumulated.saturating_add(cost(&op));
        if accounting {
            check(out, gas_left, exhausted, accumulated);
            accumulated = 0;
        }
        out.extend_from_slice(&wasm[op_start..op_end]);
        first = false;
    }
    Ok(())
}

/// Rewrites `wasm` to meter gas exactly as cosmwasm-vm's middleware does (see the module
/// documentation). Refuses a module that already exports [`GAS_LEFT_EXPORT`] or
/// [`GAS_EXHAUSTED_EXPORT`], and bytes that do not parse as a core module.
pub(crate) fn instrument(wasm: &[u8]) -> Result<Vec<u8>, CheckError> {
    let mut out = Vec::with_capacity(wasm.len() + wasm.len() / 2 + 64);
    let mut imported_globals = 0u32;
    let mut defined_globals = 0u32;
    // Index of the counter, fixed once the global section is written.
    let mut gas_left: Option<u32> = None;
    let mut exports_written = false;
    let mut code = Vec::new();
    let mut code_count = 0u32;
    let mut in_code = false;

    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        match &payload {
            Payload::Version { encoding, .. } => {
                if *encoding != wasmparser::Encoding::Module {
                    return Err(CheckError::NotAModule);
                }
                out.extend_from_slice(&wasm[..8.min(wasm.len())]);
                continue;
            }
            Payload::CodeSectionEntry(body) => {
                let g = gas_left.unwrap_or(0);
                let mut function = Vec::with_capacity(body.range().len() * 3 / 2);
                meter_body(wasm, body, g, g.wrapping_add(1), &mut function)?;
                function.len().encode(&mut code);
                code.extend_from_slice(&function);
                code_count = code_count.saturating_add(1);
                continue;
            }
            Payload::End(_) => {
                if in_code {
                    let mut data = Vec::new();
                    leb_u32(&mut data, code_count);
                    data.extend_from_slice(&code);
                    section(&mut out, CODE_ID, &data);
                    in_code = false;
                }
                if gas_left.is_none() {
                    gas_left = Some(write_globals(
                        &mut out,
                        imported_globals,
                        defined_globals,
                        None,
                    ));
                }
                if !exports_written {
                    let g = gas_left.unwrap_or(0);
                    let mut data = Vec::new();
                    leb_u32(&mut data, 2);
                    appended_exports(&mut data, g, g.wrapping_add(1));
                    section(&mut out, EXPORT_ID, &data);
                }
                continue;
            }
            _ => {}
        }
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        // The code section ends where the next section starts.
        if in_code {
            let mut data = Vec::new();
            leb_u32(&mut data, code_count);
            data.extend_from_slice(&code);
            section(&mut out, CODE_ID, &data);
            in_code = false;
        }
        let r = rank(id);
        if r > GLOBAL_RANK && gas_left.is_none() {
            gas_left = Some(write_globals(
                &mut out,
                imported_globals,
                defined_globals,
                None,
            ));
        }
        if r > EXPORT_RANK && !exports_written {
            let g = gas_left.unwrap_or(0);
            let mut data = Vec::new();
            leb_u32(&mut data, 2);
            appended_exports(&mut data, g, g.wrapping_add(1));
            section(&mut out, EXPORT_ID, &data);
            exports_written = true;
        }
        match payload {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if let TypeRef::Global(_) = import?.ty {
                        imported_globals = imported_globals.saturating_add(1);
                    }
                }
                section(&mut out, id, &wasm[range]);
            }
            Payload::GlobalSection(reader) => {
                defined_globals = reader.count();
                let entries = split_count(wasm, range)?;
                gas_left = Some(write_globals(
                    &mut out,
                    imported_globals,
                    defined_globals,
                    Some(entries),
                ));
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
                let (count, entries) = split_count(wasm, range)?;
                let g = gas_left.unwrap_or(0);
                let mut data = Vec::new();
                leb_u32(&mut data, count.saturating_add(2));
                data.extend_from_slice(entries);
                appended_exports(&mut data, g, g.wrapping_add(1));
                section(&mut out, EXPORT_ID, &data);
                exports_written = true;
            }
            Payload::CodeSectionStart { .. } => {
                in_code = true;
            }
            _ => section(&mut out, id, &wasm[range]),
        }
    }
    Ok(out)
}
