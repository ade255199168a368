//! Checks a deployed module against the host ABI and rewrites it for genesis and for runtime.
//!
//! Wasmtime re-applies active data segments and runs the start function at every instantiation
//! (DESIGN-NOTES fact 2), which would clobber restored state. So a module runs in two forms:
//! - the genesis form, run once at deploy: the original module plus exports of its memory and of
//!   its mutable globals, so the host can read the genesis state after the start function;
//! - the runtime form, instantiated over restored state: the same, with every active data
//!   segment turned into an empty passive one (indices and `memory.init` semantics are kept: an
//!   active segment is dropped after instantiation, so using it traps as an empty one does) and
//!   without the start section.
//!
//! The runtime form also names the exports whose calls cannot change persistent state (see
//! [`Shape::read_only`]): each is exported a second time as `__strata_readonly_<name>`, so a
//! cached artifact carries the analysis without its bytecode.
//!
//! Both forms are deterministic functions of the original bytes and of [`REWRITE_VERSION`], so
//! a cache key made of the module id and that version (`cache_core::Form::Runtime`) names the
//! same artifact on every node without rewriting anything. Sections are copied byte for byte
//! except the three that change.

use std::collections::BTreeSet;
use std::ops::Range;

use wasm_encoder::{DataSection, ExportKind, ExportSection, RawSection, SectionId};
use wasmparser::{DataKind, ExternalKind, Parser, Payload, TypeRef, ValType};

use crate::budget::CostCounter;
use crate::{ModuleError, VmError};

/// The version of the rewrite, part of every cache key of a rewritten form. Bump it whenever
/// the output of [`rewrite`] changes for any input (and update the golden digests of the test
/// `rewrite_output_is_pinned_by_its_version`), so that no node loads an artifact of another
/// rewrite under the same key.
pub(crate) const REWRITE_VERSION: u32 = 2;

/// The prefix of every export the rewrite adds; refused in a deployed module's own exports.
pub(crate) const RESERVED_PREFIX: &str = "__strata_";
/// The export name under which both forms expose the module's memory.
pub(crate) const MEMORY_EXPORT: &str = "__strata_memory";
/// The export prefix of the module's mutable globals, followed by the global index.
pub(crate) const GLOBAL_EXPORT_PREFIX: &str = "__strata_global_";
/// The export prefix that marks a read-only export in the runtime form, followed by the
/// export's own name (a second export of the same function).
pub(crate) const READ_ONLY_EXPORT_PREFIX: &str = "__strata_readonly_";

/// The type of a mutable global the host saves and restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GlobalKind {
    I32,
    I64,
    F32,
    F64,
    V128,
}

/// What the host needs to know of a module's structure.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shape {
    /// Function imports as (module, name).
    pub(crate) imports: Vec<(String, String)>,
    /// Whether the module defines a memory.
    pub(crate) has_memory: bool,
    /// Mutable globals: (global index, kind), in index order.
    pub(crate) mutable_globals: Vec<(u32, GlobalKind)>,
    /// The largest initial size among the module's tables, in elements (0 without a table).
    /// Known only at deploy (not read back from a compiled runtime form).
    pub(crate) largest_table: u64,
    /// The estimate of its Cranelift compile cost, read in the same pass. Known only from the
    /// bytecode (not read back from a compiled runtime form).
    pub(crate) cost: crate::CompileCost,
    /// The exported functions no call of which can change persistent state: no function
    /// reachable from them by direct calls writes memory (a store, an atomic store or
    /// read-modify-write, `memory.grow`, `fill`, `copy`, `init`) or a global, calls an
    /// imported function (a host function may write memory or key-value data), or calls
    /// indirectly (through a table or a reference, or by resuming a continuation). Read back
    /// from a compiled runtime form's `__strata_readonly_` exports.
    pub(crate) read_only: BTreeSet<String>,
}

/// Which form to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    Genesis,
    Runtime,
}

/// A feature the host cannot run or persist.
pub(crate) fn invalid(message: impl std::fmt::Display) -> VmError {
    VmError::InvalidModule(ModuleError::Unsupported(crate::one_line(
        &message.to_string(),
    )))
}

/// Bytes wasmparser cannot read.
pub(crate) fn malformed(source: wasmparser::BinaryReaderError) -> VmError {
    VmError::InvalidModule(ModuleError::Parse {
        message: crate::one_line(&source.to_string()),
        source,
    })
}

/// The shape of a compiled runtime form, read from the exports the rewrite added (the
/// `__strata_` names are reserved, so no module has them of its own): what a cache hit needs
/// without the bytecode. Imports are not listed (they were checked at deploy).
pub(crate) fn runtime_shape(module: &wasmtime::Module) -> Result<Shape, VmError> {
    let mut shape = Shape::default();
    for export in module.exports() {
        if export.name() == MEMORY_EXPORT {
            shape.has_memory = true;
        } else if let Some(index) = export.name().strip_prefix(GLOBAL_EXPORT_PREFIX) {
            let (Ok(index), Some(global)) = (index.parse::<u32>(), export.ty().global().cloned())
            else {
                return Err(invalid(format!(
                    "malformed host export {:?}",
                    export.name()
                )));
            };
            let kind = match global.content() {
                wasmtime::ValType::I32 => GlobalKind::I32,
                wasmtime::ValType::I64 => GlobalKind::I64,
                wasmtime::ValType::F32 => GlobalKind::F32,
                wasmtime::ValType::F64 => GlobalKind::F64,
                wasmtime::ValType::V128 => GlobalKind::V128,
                wasmtime::ValType::Ref(_) => {
                    return Err(invalid(
                        "mutable reference-typed globals cannot be persisted",
                    ));
                }
            };
            shape.mutable_globals.push((index, kind));
        } else if let Some(name) = export.name().strip_prefix(READ_ONLY_EXPORT_PREFIX) {
            if export.ty().func().is_none() {
                return Err(invalid(format!(
                    "malformed host export {:?}",
                    export.name()
                )));
            }
            shape.read_only.insert(name.to_owned());
        }
    }
    shape.mutable_globals.sort_by_key(|(index, _)| *index);
    Ok(shape)
}

/// The instructions whose effect outlives a call and that the host does not persist: tables are
/// not part of the committed state (an instance's tables are rebuilt from the element segments
/// at every instantiation), nor is the dropped state of a segment. A module that uses one is
/// refused at deploy, so no session silently loses such state. `None` for any other operator.
fn stateful_instruction(op: &wasmparser::Operator<'_>) -> Option<&'static str> {
    use wasmparser::Operator as O;
    Some(match op {
        O::TableSet { .. } => "table.set",
        O::TableGrow { .. } => "table.grow",
        O::TableFill { .. } => "table.fill",
        O::TableCopy { .. } => "table.copy",
        O::TableInit { .. } => "table.init",
        O::ElemDrop { .. } => "elem.drop",
        O::DataDrop { .. } => "data.drop",
        _ => return None,
    })
}

/// What an instruction can do to the state a call leaves behind, for [`Shape::read_only`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Nothing that outlives the call (locals, the operand stack, reads, traps).
    None,
    /// A direct call (or tail call) of this function index: what that function may do.
    Call(u32),
    /// It may change persistent state, or it calls code this analysis cannot see.
    Writes,
}

fn effect(op: &wasmparser::Operator<'_>) -> Effect {
    use wasmparser::Operator as O;
    match op {
        O::Call { function_index } | O::ReturnCall { function_index } => {
            Effect::Call(*function_index)
        }
        _ if may_write(op) => Effect::Writes,
        _ => Effect::None,
    }
}

/// Whether an operator may write state or call unseen code, decided by its name in
/// wasmparser's operator list, at compile time, so that an operator a later wasmparser adds
/// is classified by the same rules (and one this version does not list counts as a write):
/// stores and atomic read-modify-writes, every `*.set` but `local.set` (`global.set`, and the
/// GC and table ones), `*.grow`, `*.fill`, `*.copy` and `*.init*` (memory's, and the GC and
/// table ones, which are refused or touch no committed state: counted anyway), every call but
/// the direct ones [`effect`] takes first (indirect, by reference), and stack switching
/// (`resume`, `switch`, `suspend`: they run a continuation's function).
const fn writes_by_name(visit: &str) -> bool {
    const fn find(haystack: &[u8], needle: &[u8]) -> bool {
        let mut start = 0;
        while start + needle.len() <= haystack.len() {
            let mut i = 0;
            while i < needle.len() && haystack[start + i] == needle[i] {
                i += 1;
            }
            if i == needle.len() {
                return true;
            }
            start += 1;
        }
        false
    }
    const fn ends(haystack: &[u8], needle: &[u8]) -> bool {
        if needle.len() > haystack.len() {
            return false;
        }
        let start = haystack.len() - needle.len();
        let mut i = 0;
        while i < needle.len() {
            if haystack[start + i] != needle[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    let name = visit.as_bytes();
    (ends(name, b"_set") && !find(name, b"visit_local_"))
        || find(name, b"store")
        || find(name, b"_rmw")
        || ends(name, b"_grow")
        || ends(name, b"_fill")
        || ends(name, b"_copy")
        || find(name, b"_init")
        || find(name, b"call")
        || find(name, b"resume")
        || find(name, b"switch")
        || find(name, b"suspend")
        || find(name, b"discard")
}

macro_rules! define_may_write {
    ($( @$proposal:ident $op:ident $({ $($arg:ident: $argty:ty),* })? => $visit:ident ($($ann:tt)*))*) => {
        /// [`writes_by_name`] of the operator (direct calls included: [`effect`] takes them
        /// first).
        fn may_write(op: &wasmparser::Operator<'_>) -> bool {
            match op {
                $(
                    wasmparser::Operator::$op { .. } => {
                        const WRITES: bool = writes_by_name(stringify!($visit));
                        WRITES
                    }
                )*
                // `Operator` is non-exhaustive: an operator this list lacks may do anything.
                _ => true,
            }
        }
    };
}
wasmparser::for_each_operator!(define_may_write);

/// The direct calls of a module's functions and which of them change state in their own code:
/// the read-only analysis of [`shape`].
#[derive(Debug, Default)]
struct CallGraph {
    /// Imported functions, the first indices: each may change state.
    imported: u32,
    /// Per defined function, in index order: whether its own code may change state.
    writes: Vec<bool>,
    /// Direct calls as (callee, caller).
    edges: Vec<(u32, u32)>,
}

impl CallGraph {
    /// Per function index: whether a call of it may change state. The least fixpoint of
    /// "writes itself or calls a function that may", spread from the writers along the
    /// reverse edges: linear in the calls after one sort, and a cycle of functions none of
    /// which writes stays read-only.
    fn may_write(mut self) -> Vec<bool> {
        let mut may = vec![true; self.imported as usize];
        may.extend(self.writes);
        self.edges.sort_unstable();
        self.edges.dedup();
        let mut pending: Vec<u32> = (0..)
            .zip(&may)
            .filter_map(|(f, m)| m.then_some(f))
            .collect();
        while let Some(callee) = pending.pop() {
            let start = self.edges.partition_point(|(c, _)| *c < callee);
            for &(_, caller) in self.edges[start..].iter().take_while(|(c, _)| *c == callee) {
                if let Some(m) = may.get_mut(caller as usize)
                    && !*m
                {
                    *m = true;
                    pending.push(caller);
                }
            }
        }
        may
    }
}

/// Reads the module's structure and refuses what the host cannot run or persist, including
/// code that mutates a table or drops a segment ([`ModuleError::StatefulInstruction`]). The
/// original code is scanned: the rewrite copies the code section unchanged and emits no
/// instruction of its own.
pub(crate) fn shape(wasm: &[u8]) -> Result<Shape, VmError> {
    let mut shape = Shape::default();
    let mut memories = 0;
    let mut function = 0u32;
    let mut cost = CostCounter::default();
    let mut calls = CallGraph::default();
    let mut exported_funcs = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(malformed)?;
        if !matches!(payload, Payload::CodeSectionEntry(_)) {
            cost.payload(&payload).map_err(malformed)?;
        }
        match payload {
            Payload::Version {
                encoding: wasmparser::Encoding::Component,
                ..
            } => {
                return Err(invalid(
                    "components are not supported, deploy a core module",
                ));
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(malformed)?;
                    match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => {
                            function += 1;
                            shape
                                .imports
                                .push((import.module.to_owned(), import.name.to_owned()))
                        }
                        _ => {
                            return Err(VmError::UnsupportedImport {
                                module: import.module.to_owned(),
                                name: import.name.to_owned(),
                            });
                        }
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(malformed)?;
                    if memory.memory64 {
                        return Err(invalid("64-bit memories are not supported"));
                    }
                    if memory.shared {
                        return Err(invalid("shared memories are not supported"));
                    }
                    if memory.page_size_log2.is_some() {
                        return Err(invalid("custom page sizes are not supported"));
                    }
                    memories += 1;
                }
            }
            Payload::GlobalSection(reader) => {
                for (index, global) in reader.into_iter().enumerate() {
                    let global = global.map_err(malformed)?;
                    if !global.ty.mutable {
                        continue;
                    }
                    let kind = match global.ty.content_type {
                        ValType::I32 => GlobalKind::I32,
                        ValType::I64 => GlobalKind::I64,
                        ValType::F32 => GlobalKind::F32,
                        ValType::F64 => GlobalKind::F64,
                        ValType::V128 => GlobalKind::V128,
                        ValType::Ref(_) => {
                            return Err(invalid(
                                "mutable reference-typed globals cannot be persisted",
                            ));
                        }
                    };
                    let index = u32::try_from(index).map_err(invalid)?;
                    shape.mutable_globals.push((index, kind));
                }
            }
            Payload::TableSection(reader) => {
                for table in reader {
                    let table = table.map_err(malformed)?;
                    shape.largest_table = shape.largest_table.max(table.ty.initial);
                }
            }
            Payload::CodeSectionStart { .. } => calls.imported = function,
            Payload::CodeSectionEntry(body) => {
                let mut counted = cost.function(&body).map_err(malformed)?;
                let mut ops = body.get_operators_reader().map_err(malformed)?;
                let mut writes = false;
                while !ops.eof() {
                    let op = ops.read().map_err(malformed)?;
                    counted.operator(&op);
                    if let Some(instruction) = stateful_instruction(&op) {
                        return Err(VmError::InvalidModule(ModuleError::StatefulInstruction {
                            instruction,
                            function,
                        }));
                    }
                    match effect(&op) {
                        Effect::None => {}
                        Effect::Call(callee) => calls.edges.push((callee, function)),
                        Effect::Writes => writes = true,
                    }
                }
                calls.writes.push(writes);
                cost.add(counted);
                function += 1;
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(malformed)?;
                    if export.name.starts_with(RESERVED_PREFIX) {
                        return Err(invalid(format!(
                            "export {:?} uses the reserved prefix `__strata_`",
                            export.name
                        )));
                    }
                    if matches!(export.kind, ExternalKind::Func | ExternalKind::FuncExact) {
                        exported_funcs.push((export.name, export.index));
                    }
                }
            }
            _ => {}
        }
    }
    if memories > 1 {
        return Err(invalid(
            "modules with more than one memory are not supported",
        ));
    }
    shape.has_memory = memories == 1;
    shape.cost = cost.finish();
    let may_write = calls.may_write();
    shape.read_only = exported_funcs
        .into_iter()
        .filter(|(_, f)| may_write.get(*f as usize) == Some(&false))
        .map(|(name, _)| name.to_owned())
        .collect();
    Ok(shape)
}

/// Where the export section goes when the module has none: before the first of these.
fn comes_after_exports(id: u8) -> bool {
    [
        SectionId::Start,
        SectionId::Element,
        SectionId::DataCount,
        SectionId::Code,
        SectionId::Data,
    ]
    .iter()
    .any(|s| *s as u8 == id)
}

/// Produces the genesis or runtime form of a module whose `shape` was checked.
pub(crate) fn rewrite(wasm: &[u8], shape: &Shape, form: Form) -> Result<Vec<u8>, VmError> {
    let mut module = wasm_encoder::Module::new();
    let mut exports_written = false;
    let raw = |module: &mut wasm_encoder::Module, id: u8, range: Range<usize>| {
        module.section(&RawSection {
            id,
            data: &wasm[range],
        });
    };
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(malformed)?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        if !exports_written && id != 0 && comes_after_exports(id) {
            module.section(&host_exports(shape, form, None)?);
            exports_written = true;
        }
        match payload {
            Payload::ExportSection(reader) => {
                module.section(&host_exports(shape, form, Some(reader))?);
                exports_written = true;
            }
            Payload::StartSection { .. } if form == Form::Runtime => {}
            Payload::DataSection(reader) if form == Form::Runtime => {
                let mut data = DataSection::new();
                for segment in reader {
                    let segment = segment.map_err(malformed)?;
                    match segment.kind {
                        DataKind::Passive => data.passive(segment.data.iter().copied()),
                        DataKind::Active { .. } => data.passive([]),
                    };
                }
                module.section(&data);
            }
            _ => raw(&mut module, id, range),
        }
    }
    if !exports_written {
        module.section(&host_exports(shape, form, None)?);
    }
    Ok(module.finish())
}

/// The module's own exports followed by those of its memory and mutable globals, and in the
/// runtime form the read-only markers.
fn host_exports(
    shape: &Shape,
    form: Form,
    existing: Option<wasmparser::ExportSectionReader<'_>>,
) -> Result<ExportSection, VmError> {
    let mut exports = ExportSection::new();
    let mut read_only = Vec::new();
    if let Some(reader) = existing {
        for export in reader {
            let export = export.map_err(malformed)?;
            let kind = match export.kind {
                ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
                ExternalKind::Table => ExportKind::Table,
                ExternalKind::Memory => ExportKind::Memory,
                ExternalKind::Global => ExportKind::Global,
                ExternalKind::Tag => ExportKind::Tag,
            };
            exports.export(export.name, kind, export.index);
            if form == Form::Runtime
                && kind == ExportKind::Func
                && shape.read_only.contains(export.name)
            {
                read_only.push((export.name, export.index));
            }
        }
    }
    if shape.has_memory {
        exports.export(MEMORY_EXPORT, ExportKind::Memory, 0);
    }
    for (index, _) in &shape.mutable_globals {
        exports.export(
            &format!("{GLOBAL_EXPORT_PREFIX}{index}"),
            ExportKind::Global,
            *index,
        );
    }
    for (name, index) in read_only {
        exports.export(
            &format!("{READ_ONLY_EXPORT_PREFIX}{name}"),
            ExportKind::Func,
            index,
        );
    }
    Ok(exports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("valid wat")
    }

    const SAMPLE: &str = r#"(module
        (memory 1)
        (global $g (mut i64) (i64.const 7))
        (global $c i32 (i32.const 1))
        (data (i32.const 16) "hello")
        (data $p "passive")
        (func $init (global.set $g (i64.const 9)))
        (start $init)
        (func (export "get") (result i64) (global.get $g)))"#;

    #[test]
    fn runtime_form_drops_start_and_active_data() {
        let wasm = wat(SAMPLE);
        let shape = shape(&wasm).expect("shape");
        assert!(shape.has_memory);
        assert_eq!(shape.mutable_globals, vec![(0, GlobalKind::I64)]);
        let runtime = rewrite(&wasm, &shape, Form::Runtime).expect("rewrite");
        wasmparser::validate(&runtime).expect("runtime form is valid");
        let mut saw_start = false;
        let mut segments = Vec::new();
        let mut exports = Vec::new();
        for payload in Parser::new(0).parse_all(&runtime) {
            match payload.expect("parses") {
                Payload::StartSection { .. } => saw_start = true,
                Payload::DataSection(r) => {
                    for d in r {
                        let d = d.expect("segment");
                        assert!(matches!(d.kind, DataKind::Passive));
                        segments.push(d.data.to_vec());
                    }
                }
                Payload::ExportSection(r) => {
                    exports.extend(r.into_iter().map(|e| e.expect("export").name.to_owned()))
                }
                _ => {}
            }
        }
        assert!(!saw_start);
        assert_eq!(segments, vec![Vec::new(), b"passive".to_vec()]);
        assert_eq!(
            exports,
            [
                "get",
                MEMORY_EXPORT,
                "__strata_global_0",
                "__strata_readonly_get"
            ]
        );
        let genesis = rewrite(&wasm, &shape, Form::Genesis).expect("rewrite");
        wasmparser::validate(&genesis).expect("genesis form is valid");
        assert_ne!(genesis, runtime);
        assert_eq!(
            rewrite(&wasm, &shape, Form::Runtime).expect("again"),
            runtime
        );
    }

    /// The sha256 of [`SAMPLE`]'s runtime and genesis forms under [`REWRITE_VERSION`]
    /// (`SAMPLE` is part of the golden test: changing it means recording new digests).
    const GOLDEN: (u32, &str, &str) = (
        2,
        "d34177dc5d0ef58bcee0afed7808a418b99f6a09e6d0d4b0944903502ebe0087",
        "54c07588b5bb853eec7d1ea9b7e00ed519f91d2714118134a1edf91c52da896d",
    );

    #[test]
    fn rewrite_output_is_pinned_by_its_version() {
        // Cache keys name a rewritten form by REWRITE_VERSION alone. If this fails, the
        // rewrite's output changed: bump REWRITE_VERSION and record the new digests here.
        let wasm = wat(SAMPLE);
        let shape = shape(&wasm).expect("shape");
        let digest = |form| {
            cache_core::WasmHash::of(&rewrite(&wasm, &shape, form).expect("rewrite")).to_hex()
        };
        let (runtime, genesis) = (digest(Form::Runtime), digest(Form::Genesis));
        assert_eq!(
            (REWRITE_VERSION, runtime.as_str(), genesis.as_str()),
            GOLDEN,
            "the rewrite's output changed: bump REWRITE_VERSION and update GOLDEN"
        );
    }

    #[test]
    fn runtime_shape_reads_the_host_exports() {
        let wasm = wat(SAMPLE);
        let parsed = shape(&wasm).expect("shape");
        let runtime = rewrite(&wasm, &parsed, Form::Runtime).expect("rewrite");
        let module =
            wasmtime::Module::new(&wasmtime::Engine::default(), &runtime).expect("compiles");
        let read = runtime_shape(&module).expect("shape");
        assert_eq!(
            (read.has_memory, read.mutable_globals),
            (parsed.has_memory, parsed.mutable_globals)
        );
        let bare = wat("(module (func (export \"f\")))");
        let module = wasmtime::Module::new(&wasmtime::Engine::default(), &bare).expect("compiles");
        let read = runtime_shape(&module).expect("shape");
        assert!(!read.has_memory && read.mutable_globals.is_empty());
    }

    #[test]
    fn adds_an_export_section_where_there_was_none() {
        let wasm = wat("(module (memory 1) (global (mut i32) (i32.const 0)) (func))");
        let shape = shape(&wasm).expect("shape");
        let runtime = rewrite(&wasm, &shape, Form::Runtime).expect("rewrite");
        wasmparser::validate(&runtime).expect("valid");
    }

    #[test]
    fn refuses_what_the_host_cannot_run() {
        let cases = [
            (r#"(module (import "env" "m" (memory 1)))"#, "import"),
            ("(module (memory 1) (memory 1))", "more than one memory"),
            ("(module (memory i64 1))", "64-bit"),
            (
                r#"(module (func (export "__strata_x")))"#,
                "reserved prefix",
            ),
            (
                "(module (global (mut funcref) (ref.null func)))",
                "reference",
            ),
        ];
        for (text, expected) in cases {
            let err = shape(&wat(text)).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = shape(b"\0asm\x01\0\0\0\x05garbage").expect_err("garbage");
        assert!(matches!(err, VmError::InvalidModule(_)), "{err}");
        // wasmparser pretty-prints the expected magic over several lines: folded onto one.
        let err = shape(b"\0asx\x01\0\0\0")
            .expect_err("bad magic")
            .to_string();
        assert!(err.contains("magic") && !err.contains('\n'), "{err}");
    }

    fn read_only(text: &str) -> Vec<String> {
        shape(&wat(text))
            .expect("shape")
            .read_only
            .into_iter()
            .collect()
    }

    #[test]
    fn counter_reads_are_read_only_and_its_writes_are_not() {
        let wasm = wat(include_str!("../contracts/counter.wat"));
        let found = shape(&wasm).expect("shape").read_only;
        for name in [
            "get",
            "peek",
            "pages",
            "memory_count",
            "genesis_runs",
            "greeting",
        ] {
            assert!(found.contains(name), "{name} is read-only: {found:?}");
        }
        // A store, a global.set or an import call of its own, or through `$add`; `stored_count`
        // calls db_read, an import.
        for name in [
            "increment",
            "add",
            "poke",
            "grow",
            "stored_count",
            "add_then_trap",
        ] {
            assert!(!found.contains(name), "{name} may write: {found:?}");
        }
    }

    #[test]
    fn read_only_follows_direct_calls_through_cycles() {
        let found = read_only(
            r#"(module
                (import "env" "h" (func $h))
                (memory 1)
                (global $g (mut i32) (i32.const 0))
                (table 1 funcref)
                (type $t (func))
                (func $pure)
                (func $store (i32.store (i32.const 0) (i32.const 1)))
                (func $set (global.set $g (i32.const 1)))
                (func $fill (memory.fill (i32.const 0) (i32.const 0) (i32.const 1)))
                (func $rmw (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1))))
                (func $simd (v128.store (i32.const 0) (v128.const i64x2 0 0)))
                (func $calls_store (call $store))
                (func $calls_calls_store (call $calls_store))
                (func $tail (return_call $store))
                (func $even (param i32) (if (local.get 0) (then (call $odd (i32.sub (local.get 0) (i32.const 1))))))
                (func $odd (param i32) (if (local.get 0) (then (call $even (i32.sub (local.get 0) (i32.const 1))))))
                (func $self (param i32) (local i32) (local.set 1 (i32.load (local.get 0)))
                    (f32.copysign (f32.const 1) (f32.const -1)) (drop)
                    (if (local.get 0) (then (call $self (i32.sub (local.get 0) (i32.const 1))))))
                (func $loop_a (call $loop_b) (call $store))
                (func $loop_b (call $loop_a))
                (func $indirect (call_indirect (type $t) (i32.const 0)))
                (func $import (call $h))
                (export "pure" (func $pure))
                (export "store" (func $store))
                (export "set" (func $set))
                (export "fill" (func $fill))
                (export "rmw" (func $rmw))
                (export "simd" (func $simd))
                (export "calls_store" (func $calls_store))
                (export "calls_calls_store" (func $calls_calls_store))
                (export "tail" (func $tail))
                (export "even" (func $even))
                (export "odd" (func $odd))
                (export "self" (func $self))
                (export "self again" (func $self))
                (export "loop_b" (func $loop_b))
                (export "indirect" (func $indirect))
                (export "import" (func $import))
                (export "reexported import" (func $h)))"#,
        );
        assert_eq!(found, ["even", "odd", "pure", "self", "self again"]);
    }

    #[test]
    fn operators_are_classified_by_name() {
        for pure in [
            "visit_local_set",
            "visit_local_tee",
            "visit_global_get",
            "visit_i32_load",
            "visit_v128_load8_lane",
            "visit_i64_atomic_load",
            "visit_memory_size",
            "visit_f32_copysign",
            "visit_drop",
            "visit_unreachable",
            "visit_throw",
        ] {
            assert!(!writes_by_name(pure), "{pure}");
        }
        for writes in [
            "visit_i32_store8",
            "visit_v128_store64_lane",
            "visit_i64_atomic_store32",
            "visit_i32_atomic_rmw8_cmpxchg_u",
            "visit_global_set",
            "visit_global_atomic_set",
            "visit_struct_set",
            "visit_array_set",
            "visit_array_init_data",
            "visit_memory_grow",
            "visit_memory_fill",
            "visit_memory_copy",
            "visit_memory_init",
            "visit_call_indirect",
            "visit_return_call_indirect",
            "visit_call_ref",
            "visit_return_call_ref",
            "visit_resume",
        ] {
            assert!(writes_by_name(writes), "{writes}");
        }
        use wasmparser::Operator as O;
        assert_eq!(effect(&O::Call { function_index: 3 }), Effect::Call(3));
        assert_eq!(
            effect(&O::ReturnCall { function_index: 4 }),
            Effect::Call(4)
        );
        assert_eq!(effect(&O::LocalSet { local_index: 0 }), Effect::None);
        assert_eq!(effect(&O::GlobalSet { global_index: 0 }), Effect::Writes);
        assert_eq!(effect(&O::MemoryGrow { mem: 0 }), Effect::Writes);
        assert_eq!(
            effect(&O::CallIndirect {
                type_index: 0,
                table_index: 0
            }),
            Effect::Writes
        );
    }

    #[test]
    fn the_runtime_form_carries_the_read_only_exports() {
        let text = r#"(module
            (memory 1)
            (func $r (result i32) (i32.load (i32.const 0)))
            (func $w (i32.store (i32.const 0) (i32.const 1)))
            (export "read" (func $r))
            (export "also read" (func $r))
            (export "write" (func $w))
            (export "__strata_readonly_x_is_only_a_name" (func $r)))"#;
        // The reserved prefix is refused in a deployed module, so no marker is ever forged.
        assert!(shape(&wat(text)).is_err());
        let wasm = wat(&text.replace(
            "(export \"__strata_readonly_x_is_only_a_name\" (func $r))",
            "",
        ));
        let parsed = shape(&wasm).expect("shape");
        assert_eq!(parsed.read_only.len(), 2);
        let engine = wasmtime::Engine::default();
        let runtime = rewrite(&wasm, &parsed, Form::Runtime).expect("rewrite");
        let module = wasmtime::Module::new(&engine, &runtime).expect("compiles");
        assert_eq!(
            runtime_shape(&module).expect("shape").read_only,
            parsed.read_only
        );
        // The genesis form needs no markers.
        let genesis = rewrite(&wasm, &parsed, Form::Genesis).expect("rewrite");
        let module = wasmtime::Module::new(&engine, &genesis).expect("compiles");
        assert!(runtime_shape(&module).expect("shape").read_only.is_empty());
    }
}
