//! The static checks of `store_code` ([`check_wasm`]), the same as cosmwasm-vm 3.0.10's
//! `check_wasm` followed by its compile-time gatekeeper, and the wasmtime settings that give
//! cosmwasm-vm's execution semantics ([`configure_engine`]).
//!
//! Order of the checks (the first failure is the one cosmwasm-vm reports):
//! 1. one pass over the module with wasmparser's validator restricted to cosmwasm-vm's features
//!    (mutable globals, saturating float-to-int, sign extension, multi-value, floats, reference
//!    types), every section but the function bodies; the locals of each body are read here, and
//!    a `cw_migrate_version` custom section must be a decimal `u64`;
//! 2. tables, memories, the `interface_version_*` marker, the `allocate`/`deallocate` exports,
//!    the imports, the `requires_*` capabilities, then the function limits;
//! 3. the function bodies, validated in order;
//! 4. the gatekeeper (cosmwasm-vm runs it when compiling, after the checks): operator by
//!    operator, the first one of a proposal it does not allow.
//!
//! [`CheckError`]'s Display is cosmwasm-vm's message; [`CheckError::vm_message`] adds the prefix
//! of cosmwasm-vm's `VmError` (static validation or compile error).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use wasmparser::{
    CompositeInnerType, ExternalKind, FuncToValidate, FuncValidatorAllocations, FunctionBody,
    Operator, Parser, Payload, TypeRef, ValidPayload, Validator, ValidatorResources, VisitOperator,
    WasmFeatures,
};
use wasmtime::WasmFeatures as EngineFeatures;

/// Initial pages of the one memory, at most (cosmwasm-vm's `DEFAULT_MEMORY_LIMIT`).
pub(crate) const MAX_INITIAL_MEMORY_PAGES: u64 = 512;
/// Maximum entries of the one table.
pub(crate) const MAX_TABLE_ELEMENTS: u64 = 2500;
/// Imports, at most.
pub(crate) const MAX_IMPORTS: usize = 100;
/// Functions defined in the module, at most.
pub(crate) const MAX_FUNCTIONS: usize = 20_000;
/// Parameters of a function type, at most.
pub(crate) const MAX_FUNCTION_PARAMS: usize = 100;
/// Parameters of all defined functions together, at most.
pub(crate) const MAX_TOTAL_FUNCTION_PARAMS: usize = 10_000;
/// Results of a function type, at most.
pub(crate) const MAX_FUNCTION_RESULTS: usize = 1;
/// Declared locals of one function, at most.
pub(crate) const MAX_FUNCTION_LOCALS: usize = 100;
/// Declared locals of all functions together, at most.
pub(crate) const MAX_TOTAL_FUNCTION_LOCALS: usize = 10_000;

/// Every `env` import cosmwasm-vm 3.0.10 provides (with its default `iterator` feature), in
/// its order, which its error message prints.
pub(crate) const SUPPORTED_IMPORTS: &[&str] = &[
    "env.abort",
    "env.db_read",
    "env.db_write",
    "env.db_remove",
    "env.addr_validate",
    "env.addr_canonicalize",
    "env.addr_humanize",
    "env.bls12_381_aggregate_g1",
    "env.bls12_381_aggregate_g2",
    "env.bls12_381_pairing_equality",
    "env.bls12_381_hash_to_g1",
    "env.bls12_381_hash_to_g2",
    "env.secp256k1_verify",
    "env.secp256k1_recover_pubkey",
    "env.secp256r1_verify",
    "env.secp256r1_recover_pubkey",
    "env.ed25519_verify",
    "env.ed25519_batch_verify",
    "env.debug",
    "env.query_chain",
    "env.db_scan",
    "env.db_next",
    "env.db_next_key",
    "env.db_next_value",
];

/// Exports the VM needs besides the entry points.
const REQUIRED_EXPORTS: &[&str] = &["allocate", "deallocate"];
const INTERFACE_VERSION_PREFIX: &str = "interface_version_";
const SUPPORTED_INTERFACE_VERSIONS: &[&str] = &["interface_version_8"];
const REQUIRES_PREFIX: &str = "requires_";

/// Entry points the host may call, besides the `ibc_*`/`ibc2_*` ones.
const ENTRY_POINTS: &[&str] = &[
    "instantiate",
    "execute",
    "query",
    "migrate",
    "sudo",
    "reply",
];
/// The IBC exports whose presence together makes a contract IBC-enabled in cosmwasm-vm.
const REQUIRED_IBC_EXPORTS: &[&str] = &[
    "ibc_channel_open",
    "ibc_channel_connect",
    "ibc_channel_close",
    "ibc_packet_receive",
    "ibc_packet_ack",
    "ibc_packet_timeout",
];

/// Why a module was refused at `store_code`. The Display is cosmwasm-vm's message for the same
/// refusal.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The bytes are not a valid module under the allowed wasm features.
    #[error("Wasm bytecode could not be deserialized. Deserialization error: \"{source}\"")]
    Invalid {
        /// The parser's or validator's error.
        #[source]
        source: wasmparser::BinaryReaderError,
    },
    /// A function refers to a type that does not exist.
    #[error("Wasm bytecode error: function uses unknown type index")]
    UnknownTypeIndex,
    /// The `cw_migrate_version` custom section is not a decimal `u64` in UTF-8.
    #[error("{0}")]
    MigrateVersion(String),
    /// More than one table.
    #[error("Wasm contract must not have more than 1 table section")]
    TooManyTables,
    /// The table has no maximum.
    #[error("Wasm contract must not have unbound table section")]
    UnboundTable,
    /// The table's maximum is over the limit.
    #[error("Wasm contract's first table section has a too large max limit")]
    TableTooLarge,
    /// Not exactly one memory.
    #[error("Wasm contract must contain exactly one memory")]
    MemoryCount,
    /// The memory's initial size is over the limit.
    #[error("Wasm contract memory's minimum must not exceed {limit} pages.")]
    InitialMemoryTooLarge {
        /// The limit in pages.
        limit: u64,
    },
    /// The memory declares a maximum.
    #[error("Wasm contract memory's maximum must be unset. The host will set it for you.")]
    MemoryMaximumSet,
    /// More than one `interface_version_*` export.
    #[error("Wasm contract contains more than one marker export: interface_version_*")]
    DuplicateInterfaceVersion,
    /// An `interface_version_*` export other than `interface_version_8`.
    #[error(
        "Wasm contract has unknown interface_version_* marker export (see https://github.com/CosmWasm/cosmwasm/blob/main/packages/vm/README.md)"
    )]
    UnknownInterfaceVersion,
    /// No `interface_version_*` export.
    #[error("Wasm contract missing a required marker export: interface_version_*")]
    MissingInterfaceVersion,
    /// `allocate` or `deallocate` is not exported.
    #[error(
        "Wasm contract doesn't have required export: \"{name}\". Exports required by VM: [\"allocate\", \"deallocate\"]."
    )]
    MissingExport {
        /// The missing export.
        name: String,
    },
    /// Too many imports.
    #[error("Import count exceeds limit. Imports: {count}. Limit: {limit}.")]
    TooManyImports {
        /// The module's imports.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An import the VM does not provide.
    #[error(
        "Wasm contract requires unsupported import: \"{name}\". Required imports: {required}. Available imports: {available}."
    )]
    UnsupportedImport {
        /// `module.name` of the import.
        name: String,
        /// The module's imports, as cosmwasm-vm lists them (sorted, at most 200 characters).
        required: String,
        /// The supported imports.
        available: String,
    },
    /// A supported name imported as something other than a function.
    #[error(
        "Wasm contract requires non-function import: \"{name}\". Right now, all supported imports are functions."
    )]
    NonFunctionImport {
        /// `module.name` of the import.
        name: String,
    },
    /// `requires_*` exports naming capabilities the host does not have.
    #[error("Wasm contract requires unavailable capabilities: {0}")]
    UnavailableCapabilities(String),
    /// Too many functions.
    #[error("Wasm contract contains more than {limit} functions")]
    TooManyFunctions {
        /// The limit.
        limit: usize,
    },
    /// A function type with too many parameters.
    #[error("Wasm contract contains function with more than {limit} parameters")]
    TooManyParams {
        /// The limit.
        limit: usize,
    },
    /// A function type with too many results.
    #[error("Wasm contract contains function with more than {limit} results")]
    TooManyResults {
        /// The limit.
        limit: usize,
    },
    /// Too many parameters over all functions.
    #[error("Wasm contract contains more than {limit} function parameters in total")]
    TooManyTotalParams {
        /// The limit.
        limit: usize,
    },
    /// A function with too many locals.
    #[error("Wasm contract contains function with more than {limit} locals: {count}")]
    TooManyLocals {
        /// The limit.
        limit: usize,
        /// The most locals of a function.
        count: usize,
    },
    /// Too many locals over all functions.
    #[error("Wasm contract contains more than {limit} function locals in total: {count}")]
    TooManyTotalLocals {
        /// The limit.
        limit: usize,
        /// All locals.
        count: usize,
    },
    /// An operator the gatekeeper refuses (cosmwasm-vm refuses it when compiling).
    #[error(
        "Could not compile: WebAssembly translation error: Error in middleware Gatekeeper: {0}"
    )]
    Gatekeeper(String),
    /// The bytes are a component or another encoding, not a core module.
    #[error("not a core wasm module")]
    NotAModule,
    /// A function body grew past wasm's size limit for a body when the metering was injected.
    #[error(
        "function {index} is too large once gas metering is added ({size} bytes, limit {limit})"
    )]
    MeteredBodyTooLarge {
        /// Index of the function among the module's own functions.
        index: u32,
        /// Its size with the metering.
        size: usize,
        /// The limit (wasmparser's and wasmtime's).
        limit: usize,
    },
    /// The module already exports a name the metering rewrite adds.
    #[error("module already exports {name:?}, a name the gas metering reserves")]
    ReservedExport {
        /// The name.
        name: String,
    },
}

impl CheckError {
    /// The message as cosmwasm-vm's `VmError` displays it: a static validation error, or a
    /// compile error for the gatekeeper's refusals.
    pub fn vm_message(&self) -> String {
        match self {
            CheckError::Gatekeeper(_) => format!("Error compiling Wasm: {self}"),
            _ => format!("Error during static Wasm validation: {self}"),
        }
    }
}

impl From<wasmparser::BinaryReaderError> for CheckError {
    fn from(source: wasmparser::BinaryReaderError) -> Self {
        CheckError::Invalid { source }
    }
}

/// What the host needs to know of a module that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodeInfo {
    /// The capabilities its `requires_*` exports name.
    pub(crate) required_capabilities: BTreeSet<String>,
    /// The exported entry points (instantiate, execute, query, migrate, sudo, reply, `ibc_*`,
    /// `ibc2_*`) with their number of parameters (`migrate` takes 2, or 3 with `MigrateInfo`).
    pub(crate) entry_points: BTreeMap<String, usize>,
    /// Whether it exports every IBC entry point cosmwasm-vm requires of an IBC contract.
    pub(crate) has_ibc_entry_points: bool,
    /// The memory's initial size in pages.
    pub(crate) initial_memory_pages: u64,
    /// The `cw_migrate_version` custom section's value.
    pub(crate) contract_migrate_version: Option<u64>,
}

/// The wasm features cosmwasm-vm's parser allows (`ParsedWasm::parse`).
fn features() -> WasmFeatures {
    WasmFeatures::MUTABLE_GLOBAL
        | WasmFeatures::SATURATING_FLOAT_TO_INT
        | WasmFeatures::SIGN_EXTENSION
        | WasmFeatures::MULTI_VALUE
        | WasmFeatures::FLOATS
        | WasmFeatures::REFERENCE_TYPES
}

/// What the parse pass collects (cosmwasm-vm's `ParsedWasm`).
struct Parsed<'a> {
    imports: Vec<wasmparser::Import<'a>>,
    tables: Vec<wasmparser::TableType>,
    memories: Vec<wasmparser::MemoryType>,
    /// Exported functions: name and function index.
    exported_functions: Vec<(&'a str, u32)>,
    /// Parameter count of each type (0 for non-function types).
    type_params: Vec<usize>,
    /// Type index of each function, imported ones first.
    func_types: Vec<u32>,
    max_func_params: usize,
    max_func_results: usize,
    total_func_params: usize,
    max_func_locals: usize,
    total_func_locals: usize,
    bodies: Vec<(FuncToValidate<ValidatorResources>, FunctionBody<'a>)>,
    contract_migrate_version: Option<u64>,
}

fn parse(wasm: &[u8]) -> Result<Parsed<'_>, CheckError> {
    let mut validator = Validator::new_with_features(features());
    let mut p = Parsed {
        imports: Vec::new(),
        tables: Vec::new(),
        memories: Vec::new(),
        exported_functions: Vec::new(),
        type_params: Vec::new(),
        func_types: Vec::new(),
        max_func_params: 0,
        max_func_results: 0,
        total_func_params: 0,
        max_func_locals: 0,
        total_func_locals: 0,
        bodies: Vec::new(),
        contract_migrate_version: None,
    };
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let ValidPayload::Func(func, body) = validator.payload(&payload)? {
            let mut locals = 0usize;
            for local in body.get_locals_reader()? {
                let (n, _) = local?;
                locals = locals.saturating_add(n as usize);
            }
            p.max_func_locals = p.max_func_locals.max(locals);
            p.total_func_locals = p.total_func_locals.saturating_add(locals);
            p.bodies.push((func, body));
        }
        match payload {
            Payload::TypeSection(section) => {
                p.type_params.clear();
                for group in section {
                    for ty in group?.into_types() {
                        match ty.composite_type.inner {
                            CompositeInnerType::Func(f) => {
                                p.type_params.push(f.params().len());
                                p.max_func_params = p.max_func_params.max(f.params().len());
                                p.max_func_results = p.max_func_results.max(f.results().len());
                            }
                            _ => p.type_params.push(0),
                        }
                    }
                }
            }
            Payload::ImportSection(section) => {
                p.imports = section.into_imports().collect::<Result<_, _>>()?;
                for import in &p.imports {
                    if let TypeRef::Func(ty) = import.ty {
                        p.func_types.push(ty);
                    }
                }
            }
            Payload::FunctionSection(section) => {
                for ty in section {
                    let ty = ty?;
                    let params = p
                        .type_params
                        .get(ty as usize)
                        .ok_or(CheckError::UnknownTypeIndex)?;
                    p.total_func_params = p.total_func_params.saturating_add(*params);
                    p.func_types.push(ty);
                }
            }
            Payload::TableSection(section) => {
                p.tables = section
                    .into_iter()
                    .map(|t| t.map(|t| t.ty))
                    .collect::<Result<_, _>>()?;
            }
            Payload::MemorySection(section) => {
                p.memories = section.into_iter().collect::<Result<_, _>>()?;
            }
            Payload::ExportSection(section) => {
                for export in section {
                    let export = export?;
                    if export.kind == ExternalKind::Func {
                        p.exported_functions.push((export.name, export.index));
                    }
                }
            }
            Payload::CustomSection(reader) if reader.name() == "cw_migrate_version" => {
                let text = std::str::from_utf8(reader.data())
                    .map_err(|e| CheckError::MigrateVersion(e.to_string()))?;
                let version = text
                    .parse::<u64>()
                    .map_err(|e| CheckError::MigrateVersion(e.to_string()))?;
                p.contract_migrate_version = Some(version);
            }
            _ => {}
        }
    }
    Ok(p)
}

/// cosmwasm-vm's `LimitedDisplay` of a sorted set: `{"a", "b"}`, cut to at most `max_length`
/// characters with `, ... N more` (or `... N elements`).
fn limited_set<'s>(items: impl ExactSizeIterator<Item = &'s str>, max_length: usize) -> String {
    let count = items.len();
    let mut out = String::from("{");
    let mut starts = Vec::new();
    for (i, item) in items.enumerate() {
        starts.push(out.len());
        out.push_str(if i == 0 { "\"" } else { ", \"" });
        out.push_str(item);
        out.push('"');
        if out.len() > max_length {
            break;
        }
    }
    if out.len() < max_length {
        out.push('}');
        return out;
    }
    while let Some(previous) = starts.pop() {
        let skipped = count - starts.len();
        let remaining = count - skipped;
        let text = if remaining == 0 {
            format!("... {skipped} elements")
        } else {
            format!(", ... {skipped} more")
        };
        if previous + text.len() < max_length {
            out.truncate(previous);
            out.push_str(&text);
            out.push('}');
            return out;
        }
    }
    // Not reached with the lengths used here (cosmwasm-vm panics); keep the braces.
    String::from("{...}")
}

/// Checks `wasm` as cosmwasm-vm 3.0.10's `check_wasm` and then its gatekeeper do, with their
/// default limits, and returns what the host needs to know of it.
pub(crate) fn check_wasm(
    wasm: &[u8],
    available_capabilities: &BTreeSet<String>,
) -> Result<CodeInfo, CheckError> {
    let parsed = parse(wasm)?;

    // Tables.
    match parsed.tables.as_slice() {
        [] => {}
        [table] => match table.maximum {
            Some(max) if max > MAX_TABLE_ELEMENTS => return Err(CheckError::TableTooLarge),
            Some(_) => {}
            None => return Err(CheckError::UnboundTable),
        },
        _ => return Err(CheckError::TooManyTables),
    }

    // Memories.
    let [memory] = parsed.memories.as_slice() else {
        return Err(CheckError::MemoryCount);
    };
    if memory.initial > MAX_INITIAL_MEMORY_PAGES {
        return Err(CheckError::InitialMemoryTooLarge {
            limit: MAX_INITIAL_MEMORY_PAGES,
        });
    }
    if memory.maximum.is_some() {
        return Err(CheckError::MemoryMaximumSet);
    }

    // Exported function names, as a set (cosmwasm-vm collects them into a HashSet).
    let exported: BTreeSet<&str> = parsed.exported_functions.iter().map(|e| e.0).collect();

    // The interface version marker.
    let mut versions = exported
        .iter()
        .filter(|n| n.starts_with(INTERFACE_VERSION_PREFIX));
    match (versions.next(), versions.next()) {
        (None, _) => return Err(CheckError::MissingInterfaceVersion),
        (Some(_), Some(_)) => return Err(CheckError::DuplicateInterfaceVersion),
        (Some(v), None) if !SUPPORTED_INTERFACE_VERSIONS.contains(v) => {
            return Err(CheckError::UnknownInterfaceVersion);
        }
        (Some(_), None) => {}
    }

    // Required exports.
    if let Some(name) = REQUIRED_EXPORTS.iter().find(|n| !exported.contains(**n)) {
        return Err(CheckError::MissingExport {
            name: (*name).to_string(),
        });
    }

    // Imports.
    if parsed.imports.len() > MAX_IMPORTS {
        return Err(CheckError::TooManyImports {
            count: parsed.imports.len(),
            limit: MAX_IMPORTS,
        });
    }
    for import in &parsed.imports {
        let name = format!("{}.{}", import.module, import.name);
        if !SUPPORTED_IMPORTS.contains(&name.as_str()) {
            let all: BTreeSet<String> = parsed
                .imports
                .iter()
                .map(|i| format!("{}.{}", i.module, i.name))
                .collect();
            return Err(CheckError::UnsupportedImport {
                name,
                required: limited_set(all.iter().map(String::as_str), 200),
                available: format!("{SUPPORTED_IMPORTS:?}"),
            });
        }
        if !matches!(import.ty, TypeRef::Func(_)) {
            return Err(CheckError::NonFunctionImport { name });
        }
    }

    // Capabilities.
    let required_capabilities: BTreeSet<String> = exported
        .iter()
        .filter_map(|n| n.strip_prefix(REQUIRES_PREFIX))
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let unavailable: Vec<&str> = required_capabilities
        .iter()
        .filter(|c| !available_capabilities.contains(*c))
        .map(String::as_str)
        .collect();
    if !unavailable.is_empty() {
        return Err(CheckError::UnavailableCapabilities(limited_set(
            unavailable.into_iter(),
            200,
        )));
    }

    // Functions.
    let functions = parsed.bodies.len();
    if functions > MAX_FUNCTIONS {
        return Err(CheckError::TooManyFunctions {
            limit: MAX_FUNCTIONS,
        });
    }
    if parsed.max_func_params > MAX_FUNCTION_PARAMS {
        return Err(CheckError::TooManyParams {
            limit: MAX_FUNCTION_PARAMS,
        });
    }
    if parsed.max_func_results > MAX_FUNCTION_RESULTS {
        return Err(CheckError::TooManyResults {
            limit: MAX_FUNCTION_RESULTS,
        });
    }
    if parsed.total_func_params > MAX_TOTAL_FUNCTION_PARAMS {
        return Err(CheckError::TooManyTotalParams {
            limit: MAX_TOTAL_FUNCTION_PARAMS,
        });
    }
    if parsed.max_func_locals > MAX_FUNCTION_LOCALS {
        return Err(CheckError::TooManyLocals {
            limit: MAX_FUNCTION_LOCALS,
            count: parsed.max_func_locals,
        });
    }
    if parsed.total_func_locals > MAX_TOTAL_FUNCTION_LOCALS {
        return Err(CheckError::TooManyTotalLocals {
            limit: MAX_TOTAL_FUNCTION_LOCALS,
            count: parsed.total_func_locals,
        });
    }

    // Function bodies, then the gatekeeper over them.
    let mut allocations = FuncValidatorAllocations::default();
    let mut bodies = Vec::with_capacity(parsed.bodies.len());
    for (func, body) in parsed.bodies {
        let mut validator = func.into_validator(allocations);
        validator.validate(&body)?;
        allocations = validator.into_allocations();
        bodies.push(body);
    }
    for body in &bodies {
        if all_allowed(body) {
            continue;
        }
        for op in body.get_operators_reader()? {
            gatekeeper(&op?)?;
        }
    }

    let mut entry_points = BTreeMap::new();
    for (name, index) in &parsed.exported_functions {
        if ENTRY_POINTS.contains(name) || name.starts_with("ibc_") || name.starts_with("ibc2_") {
            let params = parsed
                .func_types
                .get(*index as usize)
                .and_then(|ty| parsed.type_params.get(*ty as usize))
                .copied()
                .unwrap_or(0);
            entry_points.insert((*name).to_string(), params);
        }
    }
    let has_ibc_entry_points = REQUIRED_IBC_EXPORTS
        .iter()
        .all(|n| entry_points.contains_key(*n));
    Ok(CodeInfo {
        required_capabilities,
        entry_points,
        has_ibc_entry_points,
        initial_memory_pages: memory.initial,
        contract_migrate_version: parsed.contract_migrate_version,
    })
}

/// The wasm proposal wasmparser files `op` under (`mvp`, `reference_types`, ...).
macro_rules! define_proposal_of {
    ($( @$proposal:ident $op:ident $({ $($payload:tt)* })? => $visit:ident ($($ann:tt)*))*) => {
        fn proposal_of(op: &Operator<'_>) -> &'static str {
            #[allow(unreachable_patterns)]
            match op {
                $( Operator::$op { .. } => stringify!($proposal), )*
                _ => "unknown",
            }
        }
    };
}
wasmparser::for_each_operator!(define_proposal_of);

/// Whether [`gatekeeper`] allows every operator of `body`, decoded without building an
/// [`Operator`] (twice as fast; the check's share of a deploy). `false` (a refused operator,
/// or one this pass cannot decode) sends the body to the operator-by-operator pass, which
/// decides, so the verdict and its message are that pass's.
fn all_allowed(body: &FunctionBody<'_>) -> bool {
    let Ok(mut reader) = body.get_operators_reader() else {
        return false;
    };
    while !reader.eof() {
        if !matches!(reader.visit_operator(&mut Allowed), Ok(true)) {
            return false;
        }
    }
    true
}

/// The visitor of [`all_allowed`]: whether the gatekeeper allows an operator, by its proposal.
struct Allowed;

/// Whether [`gatekeeper`] allows the operators of a proposal (as wasmparser names it): the one
/// list both the fast scan and the exact pass read.
const fn allowed_proposal(proposal: &str) -> bool {
    matches!(
        proposal.as_bytes(),
        b"mvp" | b"sign_extension" | b"saturating_float_to_int"
    )
}

macro_rules! define_allowed {
    ($( @$proposal:ident $op:ident $({ $($arg:ident: $argty:ty),* })? => $visit:ident ($($ann:tt)*))*) => {
        $(
            fn $visit(&mut self $($(, _: $argty)*)?) -> bool {
                allowed_proposal(stringify!($proposal))
            }
        )*
    };
}

impl<'a> VisitOperator<'a> for Allowed {
    type Output = bool;
    wasmparser::for_each_visit_operator!(define_allowed);
}

/// cosmwasm-vm's gatekeeper (default configuration: floats allowed; bulk memory, reference
/// types, SIMD, threads, exceptions and every later proposal refused), for one operator.
fn gatekeeper(op: &Operator<'_>) -> Result<(), CheckError> {
    let refuse = |what: &str, tail: &str| {
        let mut msg = String::new();
        let _ = write!(msg, "{what} detected: {op:?}. {tail}");
        Err(CheckError::Gatekeeper(msg))
    };
    const REF: (&str, &str) = (
        "Reference type operation",
        "Reference types are not supported.",
    );
    const EXC: (&str, &str) = (
        "Exception handling operation",
        "Exception handling is not supported.",
    );
    let proposal = proposal_of(op);
    // Floats (MVP float operators and saturating conversions) are allowed.
    if allowed_proposal(proposal) {
        return Ok(());
    }
    let (what, tail) = match proposal {
        "reference_types" | "function_references" | "tail_call" => REF,
        "legacy_exceptions" | "exceptions" => EXC,
        "threads" => (
            "Threads operator",
            "The Wasm Threads extension is not supported.",
        ),
        "shared_everything_threads" => (
            "Shared-Everything threads operator",
            "The Wasm Shared-Everything Threads extension is not supported.",
        ),
        "simd" => ("SIMD operator", "The Wasm SIMD extension is not supported."),
        "relaxed_simd" => (
            "Relaxed SIMD operator",
            "The Wasm Relaxed SIMD extension is not supported.",
        ),
        "bulk_memory" => (
            "Bulk memory operation",
            "Bulk memory operations are not supported.",
        ),
        "gc" => ("GC operation", "GC Proposal is not supported."),
        "memory_control" => (
            "Memory control operation",
            "Memory control is not supported.",
        ),
        "stack_switching" => (
            "Stack switching operation",
            "Stack switching is not supported.",
        ),
        "wide_arithmetic" => (
            "Wide arithmetic operation",
            "Wide arithmetic is not supported.",
        ),
        "custom_descriptors" => (
            "Custom descriptors operation",
            "Custom descriptors are not supported.",
        ),
        _ => ("Unknown operator", "This operator is not supported."),
    };
    refuse(what, tail)
}

/// Sets what cosmwasm-vm's engine implies for execution: the wasm features its checks allow
/// (anything else never reaches the engine, as [`check_wasm`] refuses it first), NaN
/// canonicalisation as its singlepass compiler does (`canonicalize_nans(true)`), and no fuel:
/// gas is the injected metering of `metering`.
///
/// Memory: cosmwasm-vm's `LimitingTunables` give the memory (which [`check_wasm`] requires to
/// declare no maximum) a maximum of the instance memory limit in pages (rounded down, capped
/// at 65,536); instantiation fails when the initial size is over that limit ("Minimum exceeds
/// the allowed memory limit"), and `memory.grow` past it returns -1. Tables are not limited
/// beyond [`check_wasm`]'s maximum. The host applies the same limit with
/// `wasmtime::StoreLimits` (a denied growth returns -1 there too; a too large initial size
/// fails instantiation).
pub(crate) fn configure_engine(config: &mut wasmtime::Config) {
    config
        .wasm_features(EngineFeatures::MUTABLE_GLOBAL, true)
        .wasm_features(EngineFeatures::SATURATING_FLOAT_TO_INT, true)
        .wasm_features(EngineFeatures::SIGN_EXTENSION, true)
        .wasm_features(EngineFeatures::MULTI_VALUE, true)
        .wasm_features(EngineFeatures::FLOATS, true)
        // Reference types need bulk memory in wasmtime; check_wasm refuses bulk memory
        // operators and passive segments before a module gets here.
        .wasm_features(EngineFeatures::REFERENCE_TYPES, true)
        .wasm_bulk_memory(true)
        .wasm_simd(false)
        .wasm_relaxed_simd(false)
        .wasm_features(EngineFeatures::THREADS, false)
        .wasm_tail_call(false)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        .wasm_extended_const(false)
        .wasm_features(EngineFeatures::EXCEPTIONS, false)
        .wasm_features(EngineFeatures::GC, false)
        .wasm_features(EngineFeatures::FUNCTION_REFERENCES, false)
        .cranelift_nan_canonicalization(true)
        .consume_fuel(false);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so that the runs repeat.
    pub(crate) fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A corpus module: from `$STRATA_CORPUS`, else `../shared/corpus` beside the workspace
    /// (as the benches find it). `None` when the corpus is absent (a fresh clone).
    pub(crate) fn corpus(name: &str) -> Option<Vec<u8>> {
        let dir = std::env::var_os("STRATA_CORPUS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
            });
        let wasm = std::fs::read(dir.join(name)).ok();
        if wasm.is_none() {
            eprintln!(
                "corpus module {name} not found in {}: not checked",
                dir.display()
            );
        }
        wasm
    }

    /// The capabilities cosmwasm-vm's tests configure (wasmd's set).
    fn capabilities() -> BTreeSet<String> {
        [
            "cosmwasm_1_1",
            "cosmwasm_1_2",
            "cosmwasm_1_3",
            "cosmwasm_1_4",
            "cosmwasm_2_0",
            "cosmwasm_2_1",
            "cosmwasm_2_2",
            "iterator",
            "staking",
            "stargate",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }

    /// A minimal contract with `body` spliced into the module.
    fn contract(body: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                (memory 1)
                (func (export "interface_version_8"))
                (func (export "allocate") (param i32) (result i32) local.get 0)
                (func (export "deallocate") (param i32))
                {body})"#
        ))
        .expect("test module parses")
    }

    fn refusal(wasm: &[u8]) -> String {
        match check_wasm(wasm, &capabilities()) {
            Ok(info) => panic!("accepted: {info:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_corpus_contracts_pass() {
        if let Some(wasm) = corpus("cosmwasm-hackatom.wasm") {
            let info = check_wasm(&wasm, &capabilities()).expect("hackatom passes");
            let expected: BTreeSet<String> = [
                "cosmwasm_1_1",
                "cosmwasm_1_2",
                "cosmwasm_1_3",
                "cosmwasm_1_4",
                "cosmwasm_2_0",
                "cosmwasm_2_1",
                "cosmwasm_2_2",
            ]
            .into_iter()
            .map(String::from)
            .collect();
            assert_eq!(info.required_capabilities, expected);
            for (name, params) in [
                ("instantiate", 3),
                ("execute", 3),
                ("query", 2),
                ("sudo", 2),
            ] {
                assert_eq!(info.entry_points.get(name), Some(&params), "{name}");
            }
            assert!(matches!(info.entry_points.get("migrate"), Some(2 | 3)));
            assert!(!info.has_ibc_entry_points);
            assert!(info.initial_memory_pages >= 16);
        }
        if let Some(wasm) = corpus("cosmwasm-cyberpunk.wasm") {
            let info = check_wasm(&wasm, &capabilities()).expect("cyberpunk passes");
            assert!(info.entry_points.contains_key("execute"));
            assert!(info.entry_points.contains_key("query"));
        }
    }

    #[test]
    fn a_minimal_contract_passes_and_reports_its_entry_points() {
        let wasm = contract(
            r#"(func (export "instantiate") (param i32 i32 i32) (result i32) i32.const 0)
               (func (export "migrate") (param i32 i32 i32) (result i32) i32.const 0)
               (func (export "requires_iterator"))
               (func (export "requires_"))
               (@custom "cw_migrate_version" "42")"#,
        );
        let info = check_wasm(&wasm, &capabilities()).expect("passes");
        assert_eq!(
            info.entry_points,
            BTreeMap::from([("instantiate".to_string(), 3), ("migrate".to_string(), 3)])
        );
        assert_eq!(
            info.required_capabilities,
            BTreeSet::from(["iterator".to_string()])
        );
        assert_eq!(info.initial_memory_pages, 1);
        assert_eq!(info.contract_migrate_version, Some(42));
        assert!(!info.has_ibc_entry_points);
    }

    #[test]
    fn bytes_that_are_not_wasm_are_refused() {
        assert_eq!(
            refusal(b"nope"),
            "Wasm bytecode could not be deserialized. Deserialization error: \"magic header not detected: bad magic number - expected=[\n    0x0,\n    0x61,\n    0x73,\n    0x6d,\n] actual=[\n    0x6e,\n    0x6f,\n    0x70,\n    0x65,\n] (at offset 0x0)\""
        );
        let err = check_wasm(b"nope", &capabilities()).unwrap_err();
        assert!(
            err.vm_message()
                .starts_with("Error during static Wasm validation: Wasm bytecode could not")
        );
    }

    #[test]
    fn features_outside_the_allowed_set_are_invalid() {
        assert_eq!(
            refusal(&contract("(func (result v128) v128.const i64x2 0 0)")),
            "Wasm bytecode could not be deserialized. Deserialization error: \"SIMD support is not enabled (at offset 0x17)\""
        );
        assert!(
            refusal(&contract(
                "(func i32.const 0 i32.const 0 i32.const 0 memory.fill)"
            ))
            .contains("bulk memory support is not enabled")
        );
        assert!(refusal(&contract("(memory 1) (data (i32.const 0) \"\")")).contains("memor"));
    }

    #[test]
    fn the_migrate_version_must_be_a_number() {
        assert_eq!(
            refusal(&contract(r#"(@custom "cw_migrate_version" "x42")"#)),
            "invalid digit found in string"
        );
    }

    #[test]
    fn tables_are_limited() {
        check_wasm(&contract("(table 2500 2500 funcref)"), &capabilities()).expect("at the limit");
        assert_eq!(
            refusal(&contract("(table 1 2501 funcref)")),
            "Wasm contract's first table section has a too large max limit"
        );
        assert_eq!(
            refusal(&contract("(table 1 funcref)")),
            "Wasm contract must not have unbound table section"
        );
        assert_eq!(
            refusal(&contract("(table 1 1 funcref) (table 1 1 funcref)")),
            "Wasm contract must not have more than 1 table section"
        );
    }

    #[test]
    fn exactly_one_memory_without_a_maximum() {
        let no_memory = wat::parse_str(
            r#"(module (func (export "interface_version_8"))
                (func (export "allocate") (param i32) (result i32) local.get 0)
                (func (export "deallocate") (param i32)))"#,
        )
        .unwrap();
        assert_eq!(
            refusal(&no_memory),
            "Wasm contract must contain exactly one memory"
        );
        let sized = |memory: &str| {
            wat::parse_str(format!(
                r#"(module {memory} (func (export "interface_version_8"))
                    (func (export "allocate") (param i32) (result i32) local.get 0)
                    (func (export "deallocate") (param i32)))"#
            ))
            .unwrap()
        };
        check_wasm(&sized("(memory 512)"), &capabilities()).expect("at the limit");
        assert_eq!(
            refusal(&sized("(memory 513)")),
            "Wasm contract memory's minimum must not exceed 512 pages."
        );
        assert_eq!(
            refusal(&sized("(memory 1 2)")),
            "Wasm contract memory's maximum must be unset. The host will set it for you."
        );
    }

    #[test]
    fn exactly_one_known_interface_version() {
        let module = |exports: &str| {
            wat::parse_str(format!(
                r#"(module (memory 1) {exports}
                    (func (export "allocate") (param i32) (result i32) local.get 0)
                    (func (export "deallocate") (param i32)))"#
            ))
            .unwrap()
        };
        assert_eq!(
            refusal(&module("")),
            "Wasm contract missing a required marker export: interface_version_*"
        );
        assert_eq!(
            refusal(&module(r#"(func (export "interface_version_7"))"#)),
            "Wasm contract has unknown interface_version_* marker export (see https://github.com/CosmWasm/cosmwasm/blob/main/packages/vm/README.md)"
        );
        assert_eq!(
            refusal(&module(
                r#"(func (export "interface_version_8")) (func (export "interface_version_9"))"#
            )),
            "Wasm contract contains more than one marker export: interface_version_*"
        );
        // A global of that name is no marker.
        assert_eq!(
            refusal(&module(
                r#"(global (export "interface_version_8") i32 (i32.const 0))"#
            )),
            "Wasm contract missing a required marker export: interface_version_*"
        );
    }

    #[test]
    fn allocate_and_deallocate_are_required() {
        let module = |exports: &str| {
            wat::parse_str(format!(
                r#"(module (memory 1) (func (export "interface_version_8")) {exports})"#
            ))
            .unwrap()
        };
        assert_eq!(
            refusal(&module(r#"(func (export "deallocate") (param i32))"#)),
            "Wasm contract doesn't have required export: \"allocate\". Exports required by VM: [\"allocate\", \"deallocate\"]."
        );
        assert_eq!(
            refusal(&module(
                r#"(func (export "allocate") (param i32) (result i32) local.get 0)"#
            )),
            "Wasm contract doesn't have required export: \"deallocate\". Exports required by VM: [\"allocate\", \"deallocate\"]."
        );
    }

    #[test]
    fn imports_are_limited_to_the_supported_functions() {
        let imports = |text: &str| {
            wat::parse_str(format!(
                r#"(module {text} (memory 1) (func (export "interface_version_8"))
                    (func (export "allocate") (param i32) (result i32) local.get 0)
                    (func (export "deallocate") (param i32)))"#
            ))
            .unwrap()
        };
        let all: String = SUPPORTED_IMPORTS
            .iter()
            .map(|n| {
                let name = n.strip_prefix("env.").unwrap();
                format!(r#"(import "env" "{name}" (func))"#)
            })
            .collect();
        check_wasm(&imports(&all), &capabilities()).expect("every supported import");

        let hundred = r#"(import "env" "abort" (func))"#.repeat(100);
        check_wasm(&imports(&hundred), &capabilities()).expect("100 imports");
        let over = r#"(import "env" "abort" (func))"#.repeat(101);
        assert_eq!(
            refusal(&imports(&over)),
            "Import count exceeds limit. Imports: 101. Limit: 100."
        );

        let spam: String = ["foo", "bar"]
            .into_iter()
            .map(String::from)
            .chain((1..=10).map(|i| format!("spammyspam{i:02}")))
            .map(|n| format!(r#"(import "env" "{n}" (func (param i32 i32) (result i32)))"#))
            .collect();
        let message = refusal(&imports(&spam));
        let expected_start = r#"Wasm contract requires unsupported import: "env.foo". Required imports: {"env.bar", "env.foo", "env.spammyspam01", "env.spammyspam02", "env.spammyspam03", "env.spammyspam04", "env.spammyspam05", "env.spammyspam06", "env.spammyspam07", "env.spammyspam08", ... 2 more}. Available imports: ["env.abort", "env.db_read", "#;
        assert!(message.starts_with(expected_start), "{message}");
        assert!(message.ends_with(r#""env.db_next_value"]."#), "{message}");

        assert_eq!(
            refusal(&imports(r#"(import "env" "db_read" (global i32))"#)),
            "Wasm contract requires non-function import: \"env.db_read\". Right now, all supported imports are functions."
        );
        assert!(
            refusal(&imports(r#"(import "other" "db_read" (func))"#))
                .starts_with("Wasm contract requires unsupported import: \"other.db_read\". Required imports: {\"other.db_read\"}.")
        );
    }

    #[test]
    fn required_capabilities_must_be_available() {
        let wasm = contract(
            r#"(func (export "requires_water")) (func (export "requires_sun"))
               (func (export "requires_nutrients")) (func (export "requires_iterator"))"#,
        );
        assert_eq!(
            refusal(&wasm),
            "Wasm contract requires unavailable capabilities: {\"nutrients\", \"sun\", \"water\"}"
        );
        let mut more = capabilities();
        more.extend(["water", "sun", "nutrients"].map(String::from));
        check_wasm(&wasm, &more).expect("all available");
    }

    #[test]
    fn function_limits() {
        let many = "(func)".repeat(MAX_FUNCTIONS - 3);
        check_wasm(&contract(&many), &capabilities()).expect("20,000 functions");
        let over = "(func)".repeat(MAX_FUNCTIONS - 2);
        assert_eq!(
            refusal(&contract(&over)),
            "Wasm contract contains more than 20000 functions"
        );

        let params = |n: usize| format!("(type (func (param {})))", "i32 ".repeat(n));
        check_wasm(&contract(&params(100)), &capabilities()).expect("100 params");
        assert_eq!(
            refusal(&contract(&params(101))),
            "Wasm contract contains function with more than 100 parameters"
        );
        assert_eq!(
            refusal(&contract("(type (func (result i32 i32)))")),
            "Wasm contract contains function with more than 1 results"
        );
        // 100 functions of 100 params, plus the 1 + 1 of allocate and deallocate.
        let total = format!("(func (param {}))", "i32 ".repeat(100)).repeat(100);
        assert_eq!(
            refusal(&contract(&total)),
            "Wasm contract contains more than 10000 function parameters in total"
        );

        let locals = |n: usize| format!("(func (local {}))", "i64 ".repeat(n));
        check_wasm(&contract(&locals(100)), &capabilities()).expect("100 locals");
        assert_eq!(
            refusal(&contract(&locals(101))),
            "Wasm contract contains function with more than 100 locals: 101"
        );
        assert_eq!(
            refusal(&contract(
                &locals(100)
                    .repeat(100)
                    .replace("(func (local", "(func (local i32")
            )),
            "Wasm contract contains function with more than 100 locals: 101"
        );
        assert_eq!(
            refusal(&contract(&(locals(100).repeat(100) + &locals(1)))),
            "Wasm contract contains more than 10000 function locals in total: 10001"
        );
    }

    #[test]
    fn bodies_are_validated_after_the_other_checks() {
        let bad_body = "(func (result i32) i64.const 0)";
        assert!(refusal(&contract(bad_body)).starts_with(
            "Wasm bytecode could not be deserialized. Deserialization error: \"type mismatch"
        ));
        // The unavailable capability is reported first, as cosmwasm-vm does.
        assert_eq!(
            refusal(&contract(&format!(
                r#"{bad_body} (func (export "requires_sun"))"#
            ))),
            "Wasm contract requires unavailable capabilities: {\"sun\"}"
        );
    }

    #[test]
    fn the_gatekeeper_refuses_reference_type_operators() {
        let err = check_wasm(
            &contract("(table 1 1 funcref) (func (result i32) table.size 0)"),
            &capabilities(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Could not compile: WebAssembly translation error: Error in middleware Gatekeeper: Reference type operation detected: TableSize { table: 0 }. Reference types are not supported."
        );
        assert!(
            err.vm_message()
                .starts_with("Error compiling Wasm: Could not compile")
        );
        assert_eq!(
            refusal(&contract("(func (result i32) ref.null func ref.is_null)")),
            "Could not compile: WebAssembly translation error: Error in middleware Gatekeeper: Reference type operation detected: RefNull { hty: Abstract { shared: false, ty: Func } }. Reference types are not supported."
        );
        // A body that does not validate is reported before the gatekeeper's refusal.
        assert!(
            refusal(&contract(
                "(table 1 1 funcref) (func (result i32) table.size 0) (func (result i32) nop)"
            ))
            .starts_with("Wasm bytecode could not be deserialized")
        );
    }

    #[test]
    fn more_refusals_and_passes_as_cosmwasm_vm_reports_them() {
        // Each message as cosmwasm-vm 3.0.10's check_wasm and compile_module print it (run
        // side by side over these modules and the ones of the tests above: all identical).
        let gatekeeper = "Error compiling Wasm: Could not compile: WebAssembly translation error: Error in middleware Gatekeeper: Reference type operation detected: ";
        let cases = [
            (
                contract("(func (result i32) i32.const 1 i32.const 2 i32.const 0 select (result i32))"),
                format!("{gatekeeper}TypedSelect {{ ty: I32 }}. Reference types are not supported."),
            ),
            (
                contract("(table 1 1 funcref) (func (result funcref) i32.const 0 table.get 0)"),
                format!("{gatekeeper}TableGet {{ table: 0 }}. Reference types are not supported."),
            ),
            (
                contract(r#"(data "abc")"#),
                "Error during static Wasm validation: Wasm bytecode could not be deserialized. Deserialization error: \"passive data segments require the bulk-memory proposal (at offset 0x64)\"".to_string(),
            ),
            (
                contract("(func (param externref))"),
                "Error during static Wasm validation: Wasm bytecode could not be deserialized. Deserialization error: \"gc types are disallowed but found type which requires gc (at offset 0x17)\"".to_string(),
            ),
            (
                contract("(func (result i32) (block (result i32 i32) i32.const 1 i32.const 2) drop)"),
                "Error during static Wasm validation: Wasm contract contains function with more than 1 results".to_string(),
            ),
            (
                Vec::new(),
                "Error during static Wasm validation: Wasm bytecode could not be deserialized. Deserialization error: \"unexpected end-of-file (at offset 0x0)\"".to_string(),
            ),
            (
                b"\0asm\x01\0\0\0\x01".to_vec(),
                "Error during static Wasm validation: Wasm bytecode could not be deserialized. Deserialization error: \"unexpected end-of-file (at offset 0x9)\"".to_string(),
            ),
        ];
        for (wasm, expected) in cases {
            let err = check_wasm(&wasm, &capabilities()).unwrap_err();
            assert_eq!(err.vm_message(), expected);
        }
        for accepted in [
            "(type $t (func)) (table 1 1 funcref) (func i32.const 0 call_indirect (type $t))",
            "(table 1 1 funcref) (func $f) (elem (i32.const 0) $f)",
            "(func $s) (start $s)",
        ] {
            check_wasm(&contract(accepted), &capabilities()).expect(accepted);
        }
    }

    #[test]
    fn floats_and_sign_extension_pass() {
        check_wasm(
            &contract(
                "(func (param f64) (result i32) local.get 0 f64.sqrt i32.trunc_sat_f64_s i32.extend8_s)",
            ),
            &capabilities(),
        )
        .expect("floats are allowed");
    }

    #[test]
    fn the_first_failure_follows_cosmwasm_vms_order() {
        // Tables before memories, memories before exports, exports before imports.
        let wasm = wat::parse_str(
            r#"(module (import "env" "nope" (func)) (table 1 funcref) (memory 1 1))"#,
        )
        .unwrap();
        assert_eq!(
            refusal(&wasm),
            "Wasm contract must not have unbound table section"
        );
        let wasm = wat::parse_str(r#"(module (import "env" "nope" (func)) (memory 1 1))"#).unwrap();
        assert_eq!(
            refusal(&wasm),
            "Wasm contract memory's maximum must be unset. The host will set it for you."
        );
        let wasm = wat::parse_str(r#"(module (import "env" "nope" (func)) (memory 1))"#).unwrap();
        assert_eq!(
            refusal(&wasm),
            "Wasm contract missing a required marker export: interface_version_*"
        );
    }

    #[test]
    fn limited_sets_are_cut_as_cosmwasm_vm_cuts_them() {
        assert_eq!(limited_set([].into_iter(), 200), "{}");
        assert_eq!(limited_set(["a", "b"].into_iter(), 200), "{\"a\", \"b\"}");
        assert_eq!(
            limited_set(["a", "b", "c"].into_iter(), 20),
            "{\"a\", \"b\", \"c\"}"
        );
        assert_eq!(
            limited_set(["aa", "bb", "cc", "dd", "ee"].into_iter(), 20),
            "{\"aa\", ... 4 more}"
        );
        assert_eq!(
            limited_set(["aaaaaaaaaa"].into_iter(), 14),
            "{\"aaaaaaaaaa\"}"
        );
        assert_eq!(
            limited_set(["aaaaaaaaaa", "b"].into_iter(), 16),
            "{... 2 elements}"
        );
    }

    #[test]
    fn an_engine_with_these_settings_builds_for_both_tiers() {
        for strategy in [wasmtime::Strategy::Cranelift, wasmtime::Strategy::Winch] {
            let mut config = wasmtime::Config::new();
            config.strategy(strategy);
            configure_engine(&mut config);
            let engine = wasmtime::Engine::new(&config).expect("engine");
            let wasm = contract("(func (param f64) (result f64) local.get 0 f64.sqrt)");
            wasmtime::Module::new(&engine, &wasm).expect("compiles");
        }
    }

    #[test]
    fn the_fast_gatekeeper_pass_agrees_with_the_exact_one() {
        // Every body of wasm-smith modules with any mix of proposals: the fast pass says
        // "allowed" exactly when every operator passes the exact gatekeeper.
        use arbitrary::{Arbitrary, Unstructured};
        let (mut allowed, mut refused) = (0, 0);
        for seed in 0..600u64 {
            let data = bytes(seed, 4096);
            let mut u = Unstructured::new(&data);
            let Ok(config) = wasm_smith::Config::arbitrary(&mut u) else {
                continue;
            };
            let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
                continue;
            };
            let wasm = module.to_bytes();
            for payload in Parser::new(0).parse_all(&wasm) {
                let Ok(Payload::CodeSectionEntry(body)) = payload else {
                    continue;
                };
                let exact = body
                    .get_operators_reader()
                    .unwrap()
                    .into_iter()
                    .all(|op| op.is_ok_and(|op| gatekeeper(&op).is_ok()));
                assert_eq!(all_allowed(&body), exact, "seed {seed}");
                if exact {
                    allowed += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert!(
            allowed > 40 && refused > 40,
            "{allowed} allowed, {refused} refused"
        );
    }
}
