//! The values a call takes and returns: wasm's four number types.

use std::fmt;

use wasmtime::ValRaw;

use crate::VmError;

/// The type of a call parameter or result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
}

/// A call argument or result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// 32-bit integer.
    I32(i32),
    /// 64-bit integer.
    I64(i64),
    /// 32-bit float.
    F32(f32),
    /// 64-bit float.
    F64(f64),
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueType::I32 => "i32",
            ValueType::I64 => "i64",
            ValueType::F32 => "f32",
            ValueType::F64 => "f64",
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::I32(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
        }
    }
}

impl ValueType {
    pub(crate) fn from_wasmtime(ty: &wasmtime::ValType) -> Result<Self, VmError> {
        match ty {
            wasmtime::ValType::I32 => Ok(ValueType::I32),
            wasmtime::ValType::I64 => Ok(ValueType::I64),
            wasmtime::ValType::F32 => Ok(ValueType::F32),
            wasmtime::ValType::F64 => Ok(ValueType::F64),
            other => Err(VmError::BadArguments(format!(
                "functions with {other} parameters or results cannot be called"
            ))),
        }
    }

    /// Parses `text` as a value of this type (integers in decimal; an i32 also accepts
    /// 0..=u32::MAX and an i64 0..=u64::MAX, read as two's complement).
    pub fn parse(self, text: &str) -> Result<Value, VmError> {
        let bad = || VmError::BadArguments(format!("{text:?} is not a valid {self}"));
        Ok(match self {
            ValueType::I32 => Value::I32(
                text.parse::<i32>()
                    .or_else(|_| text.parse::<u32>().map(|v| v as i32))
                    .map_err(|_| bad())?,
            ),
            ValueType::I64 => Value::I64(
                text.parse::<i64>()
                    .or_else(|_| text.parse::<u64>().map(|v| v as i64))
                    .map_err(|_| bad())?,
            ),
            ValueType::F32 => Value::F32(text.parse().map_err(|_| bad())?),
            ValueType::F64 => Value::F64(text.parse().map_err(|_| bad())?),
        })
    }
}

impl Value {
    /// The type of this value.
    pub fn ty(&self) -> ValueType {
        match self {
            Value::I32(_) => ValueType::I32,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The raw form `Func::call_unchecked` reads.
    pub(crate) fn to_raw(self) -> ValRaw {
        match self {
            Value::I32(v) => ValRaw::i32(v),
            Value::I64(v) => ValRaw::i64(v),
            Value::F32(v) => ValRaw::f32(v.to_bits()),
            Value::F64(v) => ValRaw::f64(v.to_bits()),
        }
    }

    /// A result `Func::call_unchecked` wrote as a value of type `ty`.
    pub(crate) fn from_raw(ty: ValueType, raw: &ValRaw) -> Self {
        match ty {
            ValueType::I32 => Value::I32(raw.get_i32()),
            ValueType::I64 => Value::I64(raw.get_i64()),
            ValueType::F32 => Value::F32(f32::from_bits(raw.get_f32())),
            ValueType::F64 => Value::F64(f64::from_bits(raw.get_f64())),
        }
    }
}

/// Parses command-line style arguments against a function's parameter types.
pub fn parse_args(params: &[ValueType], args: &[String]) -> Result<Vec<Value>, VmError> {
    if params.len() != args.len() {
        let names: Vec<String> = params.iter().map(ToString::to_string).collect();
        return Err(VmError::BadArguments(format!(
            "the function takes {} argument(s) ({}), {} given",
            params.len(),
            names.join(", "),
            args.len()
        )));
    }
    params
        .iter()
        .zip(args)
        .map(|(ty, text)| ty.parse(text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_type() {
        assert_eq!(ValueType::I32.parse("-5").ok(), Some(Value::I32(-5)));
        assert_eq!(
            ValueType::I32.parse("4294967295").ok(),
            Some(Value::I32(-1))
        );
        assert_eq!(ValueType::F64.parse("1.5").ok(), Some(Value::F64(1.5)));
        assert!(matches!(
            ValueType::I32.parse("1.5"),
            Err(VmError::BadArguments(_))
        ));
        assert!(matches!(
            ValueType::I64.parse("99999999999999999999"),
            Err(VmError::BadArguments(_))
        ));
        let err = parse_args(&[ValueType::I32], &[]).expect_err("arity");
        assert!(
            err.to_string()
                .contains("takes 1 argument(s) (i32), 0 given"),
            "{err}"
        );
        assert_eq!(Value::F32(2.5).to_string(), "2.5");
        // Arguments are quoted, so a line break cannot spread an error over several lines.
        let err = ValueType::I32
            .parse("1\n2")
            .expect_err("not a number")
            .to_string();
        assert!(!err.contains('\n') && err.contains("\"1\\n2\""), "{err}");
    }
}
