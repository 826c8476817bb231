//! Which modules may reuse an instance between merges, and the module the
//! host compiles for them.
//!
//! A merge must start from the module's initial state: memory, globals,
//! tables and segments exactly as a fresh instantiation leaves them. The
//! host can put back what it can reach: the memory (a copy of its initial
//! bytes) and the globals, once every mutable global is exported. So a
//! module may reuse instances when all of its other state is immutable:
//! it has no start function (which would run once instead of per merge),
//! one memory of its own, imports no global, and no instruction that
//! changes a table or drops a segment (`table.set`, `table.grow`,
//! `table.fill`, `table.copy`, `table.init`, `elem.drop`, `data.drop`).
//! For such a module [`plan`] returns the module with each defined mutable
//! global exported under a reserved name ([`GLOBAL_EXPORT_PREFIX`]), which
//! changes nothing the module does. Every other module runs in a fresh
//! instance per merge, as before.

use wasm_encoder::{ExportKind, ExportSection};
use wasmparser::{ExternalKind, Imports, Operator, Parser, Payload, TypeRef};

/// Exports the host adds start with this; a module that already exports a
/// name starting with it is not reused.
pub const GLOBAL_EXPORT_PREFIX: &str = "isthmus:reuse/global/";

/// A module that may reuse instances: the bytes to compile and the
/// reserved export names of its mutable globals.
#[derive(Debug)]
pub struct Plan {
    /// The module with the global exports added.
    pub bytes: Vec<u8>,
    /// The added export names, one per defined mutable global.
    pub globals: Vec<String>,
    /// The memory's initial size in bytes: what the host copies back
    /// after each merge.
    pub memory_bytes: u64,
}

/// Why a module runs in a fresh instance per merge (or the parse error
/// that stopped the reading, left for the compiler to report).
#[derive(Debug, PartialEq, Eq)]
pub enum Fresh {
    /// The module does not parse; compiling it reports why.
    Unreadable,
    /// It has state the host cannot put back; named.
    State(&'static str),
}

/// The reuse plan of `bytes`, or why its merges need fresh instances.
pub fn plan(bytes: &[u8]) -> Result<Plan, Fresh> {
    let mut imported_globals = 0u32;
    let mut globals = Vec::new();
    let mut memories = 0usize;
    let mut memory_bytes = 0u64;
    let mut exports: Option<(std::ops::Range<usize>, ExportSection)> = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|_| Fresh::Unreadable)?;
        match &payload {
            Payload::Version { encoding, .. } if *encoding != wasmparser::Encoding::Module => {
                return Err(Fresh::State("not a core module"));
            }
            Payload::ImportSection(reader) => {
                for group in reader.clone() {
                    let types: Vec<TypeRef> = match group.map_err(|_| Fresh::Unreadable)? {
                        Imports::Single(_, import) => vec![import.ty],
                        Imports::Compact1 { items, .. } => items
                            .into_iter()
                            .map(|i| i.map(|i| i.ty))
                            .collect::<Result<_, _>>()
                            .map_err(|_| Fresh::Unreadable)?,
                        Imports::Compact2 { ty, names, .. } => vec![ty; names.count() as usize],
                    };
                    for ty in types {
                        match ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => {}
                            TypeRef::Global(_) => imported_globals += 1,
                            TypeRef::Memory(_) => memories += 1,
                            TypeRef::Table(_) | TypeRef::Tag(_) => {}
                        }
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader.clone() {
                    let memory = memory.map_err(|_| Fresh::Unreadable)?;
                    if memory.shared {
                        return Err(Fresh::State("a shared memory"));
                    }
                    let page_log2 = memory.page_size_log2.unwrap_or(16).min(16);
                    memory_bytes = memory.initial.saturating_mul(1 << page_log2);
                    memories += 1;
                }
            }
            Payload::GlobalSection(reader) => {
                for (i, global) in reader.clone().into_iter().enumerate() {
                    if global.map_err(|_| Fresh::Unreadable)?.ty.mutable {
                        globals.push(imported_globals + i as u32);
                    }
                }
            }
            Payload::ExportSection(reader) => {
                let mut section = ExportSection::new();
                for export in reader.clone() {
                    let export = export.map_err(|_| Fresh::Unreadable)?;
                    if export.name.starts_with(GLOBAL_EXPORT_PREFIX) {
                        return Err(Fresh::State("an export with the host's reserved prefix"));
                    }
                    let kind = match export.kind {
                        ExternalKind::Func => ExportKind::Func,
                        ExternalKind::Table => ExportKind::Table,
                        ExternalKind::Memory => ExportKind::Memory,
                        ExternalKind::Global => ExportKind::Global,
                        ExternalKind::Tag => ExportKind::Tag,
                        ExternalKind::FuncExact => {
                            return Err(Fresh::State("an exact function export"));
                        }
                    };
                    section.export(export.name, kind, export.index);
                }
                exports = Some((reader.range(), section));
            }
            Payload::StartSection { .. } => {
                return Err(Fresh::State("a start function"));
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader().map_err(|_| Fresh::Unreadable)?;
                while !ops.eof() {
                    if let Some(what) = changes_state(&ops.read().map_err(|_| Fresh::Unreadable)?) {
                        return Err(Fresh::State(what));
                    }
                }
            }
            _ => {}
        }
    }
    if imported_globals > 0 {
        return Err(Fresh::State("an imported global"));
    }
    if memories != 1 {
        return Err(Fresh::State("not exactly one memory"));
    }
    let Some((range, mut section)) = exports else {
        return Err(Fresh::State("no exports"));
    };
    let names: Vec<String> = globals
        .iter()
        .map(|i| format!("{GLOBAL_EXPORT_PREFIX}{i}"))
        .collect();
    for (name, &index) in names.iter().zip(&globals) {
        section.export(name, ExportKind::Global, index);
    }
    Ok(Plan {
        bytes: replace_section(bytes, range, &section).ok_or(Fresh::Unreadable)?,
        globals: names,
        memory_bytes,
    })
}

/// An instruction that changes instance state the host cannot reset.
fn changes_state(op: &Operator<'_>) -> Option<&'static str> {
    Some(match op {
        Operator::TableSet { .. } => "table.set",
        Operator::TableGrow { .. } => "table.grow",
        Operator::TableFill { .. } => "table.fill",
        Operator::TableCopy { .. } => "table.copy",
        Operator::TableInit { .. } => "table.init",
        Operator::ElemDrop { .. } => "elem.drop",
        Operator::DataDrop { .. } => "data.drop",
        _ => return None,
    })
}

/// `bytes` with the section whose contents lie at `contents` replaced by
/// `section` (the section's header is everything between the previous
/// section's end and `contents.start`).
fn replace_section(
    bytes: &[u8],
    contents: std::ops::Range<usize>,
    section: &ExportSection,
) -> Option<Vec<u8>> {
    // Find where the export section's header starts: the end of the
    // section before it.
    let mut header = 8;
    for payload in Parser::new(0).parse_all(bytes) {
        if let Some((_, range)) = payload.ok()?.as_section() {
            if range == contents {
                break;
            }
            header = range.end;
        }
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    out.extend_from_slice(bytes.get(..header)?);
    let mut module = wasm_encoder::Module::new();
    module.section(section);
    // `Module::new` starts with the magic and version; keep the section.
    out.extend_from_slice(module.as_slice().get(8..)?);
    out.extend_from_slice(bytes.get(contents.end..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).expect("valid wat")
    }

    #[test]
    fn mutable_globals_are_exported_and_the_rest_is_unchanged() {
        let bytes = module(
            r#"(module
                 (memory (export "memory") 1)
                 (global $sp (mut i32) (i32.const 1024))
                 (global $k i32 (i32.const 7))
                 (global $n (mut i64) (i64.const 0))
                 (func (export "f") (result i32) global.get $sp)
                 (@custom "name-me" "data"))"#,
        );
        let plan = plan(&bytes).expect("reusable");
        assert_eq!(
            plan.globals,
            vec![
                format!("{GLOBAL_EXPORT_PREFIX}0"),
                format!("{GLOBAL_EXPORT_PREFIX}2")
            ]
        );
        let mut exports = Vec::new();
        let mut customs = Vec::new();
        for payload in Parser::new(0).parse_all(&plan.bytes) {
            match payload.expect("the new module parses") {
                Payload::ExportSection(r) => {
                    for e in r {
                        let e = e.unwrap();
                        exports.push((e.name.to_owned(), e.kind, e.index));
                    }
                }
                Payload::CustomSection(c) => customs.push(c.name().to_owned()),
                _ => {}
            }
        }
        assert_eq!(
            exports,
            vec![
                ("memory".to_owned(), ExternalKind::Memory, 0),
                ("f".to_owned(), ExternalKind::Func, 0),
                (plan.globals[0].clone(), ExternalKind::Global, 0),
                (plan.globals[1].clone(), ExternalKind::Global, 2),
            ]
        );
        assert!(customs.contains(&"name-me".to_owned()));
        assert_eq!(plan.memory_bytes, 65536);
        wasmparser::Validator::new()
            .validate_all(&plan.bytes)
            .expect("the new module validates");
    }

    #[test]
    fn state_the_host_cannot_reset_keeps_fresh_instances() {
        let cases = [
            (
                r#"(module (memory 1) (table 1 funcref) (func (export "f") (table.set (i32.const 0) (ref.null func))))"#,
                "table.set",
            ),
            (
                r#"(module (memory 1) (data "x") (func (export "f") (data.drop 0)))"#,
                "data.drop",
            ),
            (
                r#"(module (memory 1) (func $s) (start $s) (export "f" (func $s)))"#,
                "a start function",
            ),
            (r#"(module (func (export "f")))"#, "not exactly one memory"),
            (
                r#"(module (import "m" "g" (global (mut i32))) (memory 1) (export "g" (global 0)))"#,
                "an imported global",
            ),
            (
                r#"(module (memory 1) (global (mut i32) (i32.const 0)) (export "isthmus:reuse/global/0" (global 0)))"#,
                "an export with the host's reserved prefix",
            ),
        ];
        for (wat, why) in cases {
            assert_eq!(plan(&module(wat)).unwrap_err(), Fresh::State(why), "{wat}");
        }
        assert_eq!(
            plan(b"\0asm\x01\0\0\0\x07\x05").unwrap_err(),
            Fresh::Unreadable
        );
        assert_eq!(plan(b"garbage").unwrap_err(), Fresh::Unreadable);
    }
}
