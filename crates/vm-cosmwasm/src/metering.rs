//! STUB (lead's local scaffolding, replaced by the cwgas branch): adds the globals, no metering.
use crate::check::CheckError;
pub(crate) const GAS_LEFT_EXPORT: &str = "cw_gas_left";
pub(crate) const GAS_EXHAUSTED_EXPORT: &str = "cw_gas_exhausted";
pub(crate) const METERING_VERSION: u32 = 0;
fn leb(mut v: u32, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
}
fn read_leb(d: &[u8]) -> (u32, usize) {
    let mut v = 0u32;
    let mut s = 0;
    let mut i = 0;
    loop {
        let b = d[i];
        v |= ((b & 0x7f) as u32) << s;
        i += 1;
        if b & 0x80 == 0 {
            return (v, i);
        }
        s += 7;
    }
}
pub(crate) fn instrument(wasm: &[u8]) -> Result<Vec<u8>, CheckError> {
    let mut out = wasm[..8].to_vec();
    let mut nglobals = 0u32;
    let mut have_globals = false;
    let mut sections = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| CheckError::Invalid(e.to_string()))?;
        if let wasmparser::Payload::GlobalSection(r) = &payload {
            nglobals = r.count();
            have_globals = true;
        }
        if let Some((id, range)) = payload.as_section() {
            sections.push((id, range));
        }
    }
    let globals = |n: u32, rest: &[u8]| {
        let mut d = Vec::new();
        leb(n + 2, &mut d);
        d.extend_from_slice(rest);
        d.extend_from_slice(&[0x7e, 1, 0x42, 0, 0x0b, 0x7f, 1, 0x41, 0, 0x0b]);
        d
    };
    let push = |out: &mut Vec<u8>, id: u8, d: &[u8]| {
        out.push(id);
        leb(d.len() as u32, out);
        out.extend_from_slice(d);
    };
    for (id, range) in sections {
        let data = &wasm[range];
        match id {
            6 => {
                let (_, n) = read_leb(data);
                push(&mut out, 6, &globals(nglobals, &data[n..]));
            }
            7 => {
                if !have_globals {
                    push(&mut out, 6, &globals(0, &[]));
                }
                let (c, n) = read_leb(data);
                let mut d = Vec::new();
                leb(c + 2, &mut d);
                d.extend_from_slice(&data[n..]);
                for (i, name) in [GAS_LEFT_EXPORT, GAS_EXHAUSTED_EXPORT].iter().enumerate() {
                    leb(name.len() as u32, &mut d);
                    d.extend_from_slice(name.as_bytes());
                    d.push(3);
                    leb(nglobals + i as u32, &mut d);
                }
                push(&mut out, 7, &d);
            }
            _ => push(&mut out, id, data),
        }
    }
    Ok(out)
}
