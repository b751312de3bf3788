//! GGUF container reader: header, typed metadata and the tensor table.
//!
//! Written here rather than taken from candle so that every malformed or
//! truncated file becomes a typed [`GgufError`] instead of a panic or an
//! unbounded allocation: every length read from the file is checked against
//! the bytes that actually remain before anything is allocated. This module
//! reads the table only; tensor bytes are read later, by the tier store, with
//! positioned reads, so a disk-tier layer never passes through resident memory
//! it does not need. It must never interpret what the tensors mean.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::GgmlType;

const GGUF_MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// No real key, tensor name or token is anywhere near this long; a larger
/// value means the file is corrupt, and refusing it bounds allocation.
const MAX_STRING_BYTES: u64 = 64 << 20;
const MAX_DIMS: u32 = 4;
const MAX_TENSORS: u64 = 1 << 18;
const MAX_ARRAY_DEPTH: u32 = 2;
/// Metadata array elements in one file, all arrays together. The largest
/// real vocabularies (262k tokens, with scores, types and merges) hold about
/// a million; each element costs 32 bytes in memory, so this bounds the
/// metadata of a hostile file to about 512 MiB.
const MAX_METADATA_ELEMENTS: u64 = 1 << 24;

/// The fewest bytes one element of metadata type `type_id` takes in the file.
fn min_value_bytes(type_id: u32) -> u64 {
    match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")")]
    NotGguf { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: GGUF version {version} is not supported (2 and 3 are)")]
    Version { path: PathBuf, version: u32 },
    #[error("{path} is truncated or corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: tensor '{name}' uses {kind}, which Spillway does not support")]
    UnsupportedType {
        path: PathBuf,
        name: String,
        kind: String,
    },
}

/// One metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v.into()),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => self.as_u64().map(|v| v != 0),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// A short rendering for `inspect`; arrays show their length only.
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) if s.chars().count() > 80 => {
                format!(
                    "{:?}… ({} bytes)",
                    s.chars().take(60).collect::<String>(),
                    s.len()
                )
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} items]", a.len()),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

/// Where one tensor's bytes lie in the file and what they hold.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions outermost first (candle order; GGUF stores them reversed).
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset in the file.
    pub file_offset: u64,
    pub size_bytes: u64,
}

impl TensorInfo {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The parsed table of a GGUF file. Holds no tensor data.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub file_size: u64,
    /// Tensor name → its index in `tensors`.
    index: std::collections::HashMap<String, usize>,
}

struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
    path: PathBuf,
    /// Array elements still allowed (see [`MAX_METADATA_ELEMENTS`]).
    elements_left: u64,
}

impl<R: Read> Cursor<R> {
    fn corrupt(&self, what: impl Into<String>) -> GgufError {
        GgufError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
    /// Fills `buf` from the file (the caller checked that enough remains).
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        self.inner.read_exact(buf).map_err(|source| GgufError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        if self.remaining() < N as u64 {
            return Err(self.corrupt(format!("file ends at byte {} inside the header", self.len)));
        }
        self.fill(&mut buf)?;
        Ok(buf)
    }
    fn u8(&mut self) -> Result<u8, GgufError> {
        Ok(self.bytes::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.bytes()?))
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING_BYTES || len > self.remaining() {
            return Err(self.corrupt(format!(
                "a string at byte {} claims {len} bytes",
                self.pos - 8
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.fill(&mut buf)?;
        // Lossy: a few real vocabularies hold invalid UTF-8 pieces; they must
        // not make the whole file unreadable.
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
    fn value(&mut self, type_id: u32, depth: u32) -> Result<Value, GgufError> {
        Ok(match type_id {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt("metadata arrays nested too deeply"));
                }
                let elem_type = self.u32()?;
                let count = self.u64()?;
                // Every element takes at least its type's smallest encoding,
                // so a count larger than what remains allows is corruption,
                // caught before allocating.
                if count > self.remaining() / min_value_bytes(elem_type)
                    || count > self.elements_left
                {
                    return Err(self.corrupt(format!("an array claims {count} elements")));
                }
                self.elements_left -= count;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_type, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => return Err(self.corrupt(format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Reads the header, metadata and tensor table, and checks that every
    /// tensor's bytes lie inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let file_size = file.metadata().map_err(io)?.len();
        Self::parse(BufReader::with_capacity(1 << 20, file), file_size, path)
    }

    /// Parses a GGUF held in memory (`path` names it in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, GgufError> {
        Self::parse(bytes, bytes.len() as u64, path.to_path_buf())
    }

    /// Parses the header and tensor table from the first bytes of a file of
    /// `file_size` bytes (a range read of a remote file): every tensor's
    /// bytes are checked against the whole file's size. Too short a prefix
    /// is an error like a truncated file.
    pub fn from_prefix(prefix: &[u8], file_size: u64, path: &Path) -> Result<Self, GgufError> {
        Self::parse(prefix, file_size, path.to_path_buf())
    }

    /// A file of metadata only (no tensors), e.g. a tokenizer made in memory.
    pub fn from_metadata(entries: Vec<(String, Value)>) -> Self {
        GgufFile {
            path: PathBuf::new(),
            version: 3,
            metadata: entries.into_iter().collect(),
            tensors: Vec::new(),
            file_size: 0,
            index: Default::default(),
        }
    }

    fn parse(inner: impl Read, file_size: u64, path: PathBuf) -> Result<Self, GgufError> {
        let mut cur = Cursor {
            inner,
            pos: 0,
            len: file_size,
            path: path.clone(),
            elements_left: MAX_METADATA_ELEMENTS,
        };
        if file_size < 4 {
            return Err(GgufError::Corrupt {
                path,
                what: format!("only {file_size} bytes long"),
            });
        }
        let magic = cur.bytes::<4>()?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::NotGguf { path, magic });
        }
        let version = cur.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version { path, version });
        }
        let tensor_count = cur.u64()?;
        let kv_count = cur.u64()?;
        // The largest real files (mixture-of-experts checkpoints with one
        // tensor per expert) hold tens of thousands of tensors.
        if tensor_count > cur.remaining() / 24
            || tensor_count > MAX_TENSORS
            || kv_count > cur.remaining() / 12
        {
            return Err(cur.corrupt(format!(
                "header claims {tensor_count} tensors and {kv_count} metadata entries"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = cur.string()?;
            let type_id = cur.u32()?;
            let value = cur.value(type_id, 0)?;
            metadata.insert(key, value);
        }
        let mut raw_tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = cur.string()?;
            let n_dims = cur.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(cur.corrupt(format!("tensor '{name}' has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(cur.u64()?);
            }
            let type_id = cur.u32()?;
            let offset = cur.u64()?;
            raw_tensors.push((name, dims, type_id, offset));
        }
        let alignment = match metadata.get("general.alignment").and_then(Value::as_u64) {
            Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
            Some(a) => return Err(cur.corrupt(format!("alignment {a} is not a power of two"))),
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = cur.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw_tensors.len());
        let mut index = std::collections::HashMap::with_capacity(raw_tensors.len());
        for (name, dims, type_id, offset) in raw_tensors {
            if index.insert(name.clone(), tensors.len()).is_some() {
                return Err(cur.corrupt(format!("tensor '{name}' appears twice")));
            }
            let ggml_type =
                GgmlType::from_id(type_id).map_err(|kind| GgufError::UnsupportedType {
                    path: path.clone(),
                    name: name.clone(),
                    kind,
                })?;
            let mut shape: Vec<usize> = Vec::with_capacity(dims.len());
            let mut elems: u64 = 1;
            for &d in dims.iter().rev() {
                elems = elems
                    .checked_mul(d)
                    .ok_or_else(|| cur.corrupt(format!("tensor '{name}' dimensions overflow")))?;
                shape.push(
                    usize::try_from(d)
                        .map_err(|_| cur.corrupt(format!("tensor '{name}' is too large")))?,
                );
            }
            let size_bytes = ggml_type.bytes_for(elems).ok_or_else(|| {
                cur.corrupt(format!(
                    "tensor '{name}' has {elems} elements, not a whole number of {ggml_type} blocks"
                ))
            })?;
            let file_offset = data_start
                .checked_add(offset)
                .filter(|o| o % 4 == 0)
                .ok_or_else(|| cur.corrupt(format!("tensor '{name}' has a bad offset {offset}")))?;
            let end = file_offset.checked_add(size_bytes);
            if end.is_none_or(|end| end > file_size) {
                return Err(cur.corrupt(format!(
                    "tensor '{name}' needs bytes {file_offset}..{} but the file has {file_size}",
                    file_offset.saturating_add(size_bytes)
                )));
            }
            tensors.push(TensorInfo {
                name,
                shape,
                ggml_type,
                file_offset,
                size_bytes,
            });
        }
        Ok(GgufFile {
            path,
            version,
            metadata,
            tensors,
            file_size,
            index,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a minimal GGUF file for parser tests: metadata of strings and
    /// u32s, and F32 tensors filled with the given values.
    pub(crate) fn write_gguf(
        path: &Path,
        metadata: &[(&str, Value)],
        tensors: &[(&str, Vec<usize>, Vec<f32>)],
    ) {
        fn put_str(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        fn put_value(out: &mut Vec<u8>, v: &Value) {
            match v {
                Value::U32(x) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                Value::F32(x) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                Value::String(s) => {
                    out.extend(8u32.to_le_bytes());
                    put_str(out, s);
                }
                other => panic!("test writer does not support {other:?}"),
            }
        }
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut out, k);
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for (name, shape, data) in tensors {
            put_str(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                out.extend((*d as u64).to_le_bytes());
            }
            out.extend(0u32.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64 * 4).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        for (_, _, data) in tensors {
            let start = out.len();
            for x in data {
                out.extend(x.to_le_bytes());
            }
            while (out.len() - start) % 32 != 0 {
                out.push(0);
            }
        }
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        write_gguf(
            &p,
            &[
                ("general.architecture", Value::String("llama".into())),
                ("llama.block_count", Value::U32(2)),
            ],
            &[
                ("a", vec![2, 3], vec![1.0; 6]),
                ("b", vec![4], vec![2.0; 4]),
            ],
        );
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.get("llama.block_count").and_then(Value::as_u64), Some(2));
        let a = g.tensor("a").unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.size_bytes, 24);
        assert_eq!(g.tensor("b").unwrap().file_offset, a.file_offset + 32);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        write_gguf(
            &p,
            &[("general.architecture", Value::String("llama".into()))],
            &[("a", vec![8], vec![1.0; 8])],
        );
        let full = std::fs::read(&p).unwrap();
        for cut in 0..full.len() {
            let q = dir.path().join("cut.gguf");
            std::fs::write(&q, &full[..cut]).unwrap();
            assert!(GgufFile::open(&q).is_err(), "cut at {cut} was accepted");
        }
    }

    /// A GGUF v3 header with no tensors and one metadata entry to follow.
    fn one_entry_header() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        out
    }

    #[test]
    fn absurd_lengths_are_rejected_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let mut out = one_entry_header();
        out.extend(u64::MAX.to_le_bytes()); // key length
        out.extend([0u8; 64]);
        std::fs::write(&p, &out).unwrap();
        let err = GgufFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        std::fs::write(&p, b"PK\x03\x04 this is a zip").unwrap();
        assert!(matches!(GgufFile::open(&p), Err(GgufError::NotGguf { .. })));
    }

    /// An array's count is bounded by what its element type needs: 2^20
    /// u64 elements in a file of 1 MiB are refused before allocating
    /// (32 bytes a `Value` would have asked for 32 MiB; a larger claim,
    /// gigabytes).
    #[test]
    fn array_counts_are_bounded_by_their_element_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let mut out = one_entry_header();
        let key = "tokenizer.ggml.scores";
        out.extend((key.len() as u64).to_le_bytes());
        out.extend(key.as_bytes());
        out.extend(9u32.to_le_bytes()); // array
        out.extend(10u32.to_le_bytes()); // of u64
        out.extend((1u64 << 20).to_le_bytes());
        out.extend(vec![0u8; 1 << 20]); // room for 2^20 bytes, not 2^20 u64s
        std::fs::write(&p, &out).unwrap();
        let err = GgufFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("claims 1048576 elements"), "{err}");
    }
}
