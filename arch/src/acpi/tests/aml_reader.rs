//! A tiny AML decoder for the tests: enough of the grammar to read back what the DSDT builder
//! emits (`Name`, `Scope`, `Device`, `Method`, `Mutex`, `OperationRegion`, `Field`, integers,
//! strings, buffers, packages) and the resource descriptors in `_CRS` buffers. Method bodies
//! are kept as bytes, not decoded. Anything else is reported as an error, so a test fails
//! loudly if the DSDT contains something unexpected or malformed.

use std::collections::BTreeMap;

/// A decoded data object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obj {
    Int(u64),
    Str(String),
    Buf(Vec<u8>),
    Pkg(Vec<Obj>),
}

/// A control method: its argument count, whether it is serialized, and its body (undecoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Method {
    pub args: u8,
    pub serialized: bool,
    pub body: Vec<u8>,
}

/// An operation region: address space, offset and length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub space: u8,
    pub offset: u64,
    pub len: u64,
}

/// A named field unit: its region, the field's flags byte, bit offset and bit width.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldUnit {
    pub region: String,
    pub flags: u8,
    pub bit_offset: usize,
    pub bits: usize,
}

/// The namespace built by a definition block: named objects and devices, by absolute path
/// (`\_SB_.COM1._HID`).
#[derive(Debug, Default)]
pub struct Namespace {
    pub names: BTreeMap<String, Obj>,
    pub devices: Vec<String>,
    pub methods: BTreeMap<String, Method>,
    /// Mutexes and their sync levels.
    pub mutexes: BTreeMap<String, u8>,
    pub regions: BTreeMap<String, Region>,
    pub fields: BTreeMap<String, FieldUnit>,
}

impl Namespace {
    /// Every absolute path declared (names, devices, methods, mutexes, regions, fields).
    pub fn paths(&self) -> Vec<&str> {
        self.names
            .keys()
            .chain(&self.devices)
            .chain(self.methods.keys())
            .chain(self.mutexes.keys())
            .chain(self.regions.keys())
            .chain(self.fields.keys())
            .map(String::as_str)
            .collect()
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| format!("unexpected end of AML at {:#x}", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn le(&mut self, n: usize) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.byte()?) << (8 * i);
        }
        Ok(v)
    }

    /// Reads a PkgLength and returns the length it encodes (including its own bytes).
    fn pkg_len(&mut self) -> Result<usize, String> {
        let lead = self.byte()?;
        let follow = usize::from(lead >> 6);
        let mut len = if follow == 0 {
            usize::from(lead & 0x3f)
        } else {
            usize::from(lead & 0x0f)
        };
        for i in 0..follow {
            len |= usize::from(self.byte()?) << (4 + 8 * i);
        }
        Ok(len)
    }

    /// Reads a PkgLength and returns the absolute end offset it designates.
    fn pkg_end(&mut self) -> Result<usize, String> {
        let start = self.pos;
        let lead = self.byte()?;
        let follow = usize::from(lead >> 6);
        let mut len = if follow == 0 {
            usize::from(lead & 0x3f)
        } else {
            usize::from(lead & 0x0f)
        };
        for i in 0..follow {
            len |= usize::from(self.byte()?) << (4 + 8 * i);
        }
        let end = start + len;
        if end > self.data.len() {
            return Err(format!("PkgLength at {start:#x} runs past the end"));
        }
        Ok(end)
    }

    fn name_seg(&mut self) -> Result<String, String> {
        let mut s = String::new();
        for _ in 0..4 {
            let c = self.byte()?;
            if !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_') {
                return Err(format!("bad NameSeg char {c:#x} at {:#x}", self.pos - 1));
            }
            s.push(char::from(c));
        }
        Ok(s)
    }

    /// Reads a NameString and resolves it against `scope` (an absolute path, `\` for root).
    fn name_string(&mut self, scope: &str) -> Result<String, String> {
        let mut segs: Vec<String> = if self.data.get(self.pos) == Some(&b'\\') {
            self.pos += 1;
            Vec::new()
        } else {
            scope
                .trim_start_matches('\\')
                .split('.')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        while self.data.get(self.pos) == Some(&b'^') {
            self.pos += 1;
            segs.pop();
        }
        let count = match self.data.get(self.pos) {
            Some(0x2e) => {
                self.pos += 1;
                2
            }
            Some(0x2f) => {
                self.pos += 1;
                usize::from(self.byte()?)
            }
            Some(0x00) => {
                self.pos += 1;
                0
            }
            _ => 1,
        };
        for _ in 0..count {
            segs.push(self.name_seg()?);
        }
        Ok(format!("\\{}", segs.join(".")))
    }

    fn data_object(&mut self) -> Result<Obj, String> {
        let at = self.pos;
        Ok(match self.byte()? {
            0x00 => Obj::Int(0),
            0x01 => Obj::Int(1),
            0xff => Obj::Int(u64::MAX),
            0x0a => Obj::Int(self.le(1)?),
            0x0b => Obj::Int(self.le(2)?),
            0x0c => Obj::Int(self.le(4)?),
            0x0e => Obj::Int(self.le(8)?),
            0x0d => {
                let mut s = String::new();
                loop {
                    match self.byte()? {
                        0 => break,
                        c if c.is_ascii() => s.push(char::from(c)),
                        c => return Err(format!("non-ASCII string byte {c:#x}")),
                    }
                }
                Obj::Str(s)
            }
            0x11 => {
                let end = self.pkg_end()?;
                let Obj::Int(size) = self.data_object()? else {
                    return Err(format!("buffer at {at:#x}: size is not an integer"));
                };
                let bytes = self.data[self.pos..end].to_vec();
                if bytes.len() as u64 != size {
                    return Err(format!(
                        "buffer at {at:#x}: size {size} but {} bytes",
                        bytes.len()
                    ));
                }
                self.pos = end;
                Obj::Buf(bytes)
            }
            0x12 => {
                let end = self.pkg_end()?;
                let n = usize::from(self.byte()?);
                let mut elems = Vec::new();
                while self.pos < end {
                    elems.push(self.data_object()?);
                }
                if self.pos != end || elems.len() != n {
                    return Err(format!("package at {at:#x}: malformed"));
                }
                Obj::Pkg(elems)
            }
            op => return Err(format!("unsupported data object opcode {op:#x} at {at:#x}")),
        })
    }

    fn integer(&mut self) -> Result<u64, String> {
        let at = self.pos;
        match self.data_object()? {
            Obj::Int(v) => Ok(v),
            other => Err(format!("expected an integer at {at:#x}, got {other:?}")),
        }
    }

    fn declare<T>(map: &mut BTreeMap<String, T>, name: String, v: T) -> Result<(), String> {
        if map.insert(name.clone(), v).is_some() {
            return Err(format!("{name} declared twice"));
        }
        Ok(())
    }

    fn field_list(&mut self, end: usize, scope: &str, ns: &mut Namespace) -> Result<(), String> {
        let region = self.name_string(scope)?;
        let flags = self.byte()?;
        let mut bit_offset = 0;
        while self.pos < end {
            if self.data.get(self.pos) == Some(&0x00) {
                self.pos += 1;
                bit_offset += self.pkg_len()?;
                continue;
            }
            let seg = self.name_seg()?;
            let name = if scope == "\\" {
                format!("\\{seg}")
            } else {
                format!("{scope}.{seg}")
            };
            let bits = self.pkg_len()?;
            let unit = FieldUnit {
                region: region.clone(),
                flags,
                bit_offset,
                bits,
            };
            Self::declare(&mut ns.fields, name, unit)?;
            bit_offset += bits;
        }
        if self.pos != end {
            return Err(format!("field list overran its end {end:#x}"));
        }
        Ok(())
    }

    fn term_list(&mut self, end: usize, scope: &str, ns: &mut Namespace) -> Result<(), String> {
        while self.pos < end {
            let at = self.pos;
            match self.byte()? {
                0x14 => {
                    let end = self.pkg_end()?;
                    let name = self.name_string(scope)?;
                    let flags = self.byte()?;
                    let method = Method {
                        args: flags & 7,
                        serialized: flags & 8 != 0,
                        body: self.data[self.pos..end].to_vec(),
                    };
                    self.pos = end;
                    Self::declare(&mut ns.methods, name, method)?;
                }
                0x5b if self.data.get(self.pos) == Some(&0x01) => {
                    self.pos += 1;
                    let name = self.name_string(scope)?;
                    let level = self.byte()?;
                    Self::declare(&mut ns.mutexes, name, level)?;
                }
                0x5b if self.data.get(self.pos) == Some(&0x80) => {
                    self.pos += 1;
                    let name = self.name_string(scope)?;
                    let space = self.byte()?;
                    let offset = self.integer()?;
                    let len = self.integer()?;
                    Self::declare(&mut ns.regions, name, Region { space, offset, len })?;
                }
                0x5b if self.data.get(self.pos) == Some(&0x81) => {
                    self.pos += 1;
                    let end = self.pkg_end()?;
                    self.field_list(end, scope, ns)?;
                }
                0x08 => {
                    let name = self.name_string(scope)?;
                    let obj = self.data_object()?;
                    if ns.names.insert(name.clone(), obj).is_some() {
                        return Err(format!("{name} declared twice"));
                    }
                }
                0x10 => {
                    let end = self.pkg_end()?;
                    let name = self.name_string(scope)?;
                    self.term_list(end, &name, ns)?;
                }
                0x5b if self.data.get(self.pos) == Some(&0x82) => {
                    self.pos += 1;
                    let end = self.pkg_end()?;
                    let name = self.name_string(scope)?;
                    ns.devices.push(name.clone());
                    self.term_list(end, &name, ns)?;
                }
                op => return Err(format!("unsupported opcode {op:#x} at {at:#x}")),
            }
        }
        if self.pos != end {
            return Err(format!("term list overran its end {end:#x}"));
        }
        Ok(())
    }
}

/// Decodes a whole AML byte stream (a DSDT body) into its namespace.
pub fn decode(aml: &[u8]) -> Result<Namespace, String> {
    let mut ns = Namespace::default();
    let mut r = Reader { data: aml, pos: 0 };
    r.term_list(aml.len(), "\\", &mut ns)?;
    Ok(ns)
}

/// A decoded resource descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// I/O port descriptor.
    Io {
        decode16: bool,
        min: u16,
        max: u16,
        align: u8,
        len: u8,
    },
    /// Extended interrupt descriptor.
    Irq { flags: u8, irqs: Vec<u32> },
    /// 32-bit fixed memory range descriptor.
    Memory32Fixed { writable: bool, base: u32, len: u32 },
}

/// Decodes a `_CRS` resource template buffer; checks it ends with an end tag.
pub fn resources(buf: &[u8]) -> Result<Vec<Resource>, String> {
    let mut out = Vec::new();
    let mut r = Reader { data: buf, pos: 0 };
    loop {
        let tag = r.byte()?;
        if tag & 0x80 == 0 {
            let (kind, len) = ((tag >> 3) & 0xf, usize::from(tag & 7));
            match (kind, len) {
                (0x8, 7) => out.push(Resource::Io {
                    decode16: r.byte()? & 1 == 1,
                    min: r.le(2)? as u16,
                    max: r.le(2)? as u16,
                    align: r.byte()?,
                    len: r.byte()?,
                }),
                (0xf, 1) => {
                    r.byte()?; // checksum
                    if r.pos != buf.len() {
                        return Err("data after the end tag".into());
                    }
                    return Ok(out);
                }
                _ => return Err(format!("unsupported small descriptor {tag:#x}")),
            }
        } else {
            let len = r.le(2)? as usize;
            let start = r.pos;
            match tag {
                0x89 => {
                    let flags = r.byte()?;
                    let count = r.byte()?;
                    let irqs = (0..count)
                        .map(|_| r.le(4).map(|v| v as u32))
                        .collect::<Result<_, _>>()?;
                    out.push(Resource::Irq { flags, irqs });
                }
                0x86 => out.push(Resource::Memory32Fixed {
                    writable: r.byte()? & 1 == 1,
                    base: r.le(4)? as u32,
                    len: r.le(4)? as u32,
                }),
                _ => return Err(format!("unsupported large descriptor {tag:#x}")),
            }
            if r.pos != start + len {
                return Err(format!("descriptor {tag:#x}: length mismatch"));
            }
        }
    }
}

/// Decodes a compressed EISA id (`EisaId("PNP0501")`) back to its string.
pub fn eisa_id(v: u64) -> String {
    let v = (v as u32).swap_bytes();
    let letter = |shift: u32| char::from(b'@' + ((v >> shift) & 0x1f) as u8);
    format!(
        "{}{}{}{:04X}",
        letter(26),
        letter(21),
        letter(16),
        v & 0xffff
    )
}
