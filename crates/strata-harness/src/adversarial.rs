//! Adversarial wasm modules: valid modules shaped to make an optimising compiler work hard,
//! each parameterised by a size, for the compile-time benchmarks and the compile-budget tests.
//!
//! Every module has no imports, no memory and one exported function `run: (i32) -> i32` whose
//! result depends on its argument, so a test can deploy it under the host ABI and call it.
//!
//! ```
//! use strata_harness::adversarial::Shape;
//!
//! for shape in Shape::ALL {
//!     let small = shape.module(16);
//!     let large = shape.module(1024);
//!     assert!(large.len() > small.len(), "{}", shape.name());
//! }
//! ```

use wasm_encoder::{
    BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection, Module,
    TypeSection, ValType,
};

/// A shape of adversarial module, grown by one size parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One function of `size` nested blocks (every third a `loop`), each closing with a few
    /// instructions and a conditional branch out of its block.
    DeepNesting,
    /// One function whose body is `size` straight-line statements (a load of two of eight
    /// locals, arithmetic, a store into a third), no control flow.
    HugeFunction,
    /// One function with `size` `i64` locals, all updated in a loop and summed after it, so
    /// every one is live across the loop's back edge.
    ManyLocals,
    /// One function with a `br_table` of `size` entries spread over up to 64 distinct blocks.
    HugeBrTable,
}

/// The most distinct targets of [`Shape::HugeBrTable`]'s `br_table` (its entries repeat them).
pub const BR_TABLE_LABELS: u32 = 64;

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 4] = [
        Shape::DeepNesting,
        Shape::HugeFunction,
        Shape::ManyLocals,
        Shape::HugeBrTable,
    ];

    /// The shape's name, in snake case (`deep_nesting`).
    pub fn name(self) -> &'static str {
        match self {
            Shape::DeepNesting => "deep_nesting",
            Shape::HugeFunction => "huge_function",
            Shape::ManyLocals => "many_locals",
            Shape::HugeBrTable => "huge_br_table",
        }
    }

    /// The module of this shape at `size` (at least 1): nesting depth, statements, locals or
    /// `br_table` entries.
    pub fn module(self, size: u32) -> Vec<u8> {
        let size = size.max(1);
        let function = match self {
            Shape::DeepNesting => deep_nesting(size),
            Shape::HugeFunction => huge_function(size),
            Shape::ManyLocals => many_locals(size),
            Shape::HugeBrTable => huge_br_table(size),
        };
        one_function_module(&function)
    }
}

/// A module exporting `function` as `run: (i32) -> i32`.
fn one_function_module(function: &Function) -> Vec<u8> {
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    module.section(&types);
    let mut functions = FunctionSection::new();
    functions.function(0);
    module.section(&functions);
    let mut exports = ExportSection::new();
    exports.export("run", ExportKind::Func, 0);
    module.section(&exports);
    let mut code = CodeSection::new();
    code.function(function);
    module.section(&code);
    module.finish()
}

fn deep_nesting(depth: u32) -> Function {
    // Local 0 is the argument, local 1 the accumulator.
    let mut f = Function::new([(1, ValType::I32)]);
    let mut body = f.instructions();
    let is_loop = |level: u32| level % 3 == 2;
    for level in 0..depth {
        if is_loop(level) {
            body.loop_(BlockType::Empty);
        } else {
            body.block(BlockType::Empty);
        }
    }
    for level in (0..depth).rev() {
        body.local_get(1)
            .i32_const(level as i32)
            .i32_add()
            .local_set(1);
        // Leave the block when the argument names this level (a loop is never re-entered:
        // its label would branch back).
        if !is_loop(level) {
            body.local_get(0).i32_const(level as i32).i32_eq().br_if(0);
        }
        body.end();
    }
    body.local_get(1).end();
    f
}

fn huge_function(statements: u32) -> Function {
    // Local 0 is the argument; locals 1..=8 the working set.
    let mut f = Function::new([(8, ValType::I32)]);
    let mut body = f.instructions();
    for l in 1..=8 {
        body.local_get(0).i32_const(l).i32_add().local_set(l as u32);
    }
    for s in 0..statements {
        let (a, b, c) = (1 + s % 8, 1 + (s * 3 + 1) % 8, 1 + (s * 5 + 2) % 8);
        body.local_get(a).local_get(b);
        match s % 4 {
            0 => body.i32_add(),
            1 => body.i32_xor(),
            2 => body.i32_mul(),
            _ => body.i32_sub(),
        };
        body.i32_const(s as i32).i32_add().local_set(c);
    }
    body.local_get(1);
    for l in 2..=8 {
        body.local_get(l).i32_add();
    }
    body.end();
    f
}

fn many_locals(locals: u32) -> Function {
    // Local 0 is the argument (the loop count); locals 1..=n the i64 working set.
    let mut f = Function::new([(locals, ValType::I64)]);
    let mut body = f.instructions();
    body.loop_(BlockType::Empty);
    for i in 0..locals {
        let other = 1 + (i.wrapping_mul(7).wrapping_add(3)) % locals;
        body.local_get(1 + i)
            .local_get(other)
            .i64_add()
            .i64_const(i64::from(i) + 1)
            .i64_xor()
            .local_set(1 + i);
    }
    body.local_get(0)
        .i32_const(1)
        .i32_sub()
        .local_tee(0)
        .i32_const(0)
        .i32_gt_s()
        .br_if(0)
        .end();
    body.local_get(1);
    for i in 1..locals {
        body.local_get(1 + i).i64_add();
    }
    body.i32_wrap_i64().end();
    f
}

fn huge_br_table(entries: u32) -> Function {
    let labels = entries.min(BR_TABLE_LABELS);
    let mut f = Function::new([]);
    let mut body = f.instructions();
    for _ in 0..labels {
        body.block(BlockType::Empty);
    }
    body.local_get(0)
        .br_table((0..entries).map(|e| (e * 7) % labels), labels - 1)
        .end();
    // After the end of the block of label `l`: where a branch to `l` lands.
    for l in 0..labels - 1 {
        body.i32_const(100 + l as i32).return_().end();
    }
    body.i32_const(100 + labels as i32 - 1).end();
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_grow_with_their_size() {
        for shape in Shape::ALL {
            let sizes: Vec<usize> = [1, 10, 100, 1000]
                .iter()
                .map(|&n| shape.module(n).len())
                .collect();
            assert!(
                sizes.windows(2).all(|w| w[0] < w[1]),
                "{shape:?}: {sizes:?}"
            );
        }
    }
}
