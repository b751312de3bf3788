//! Writes GGUF v3 files: metadata, the tensor table, then tensor data
//! streamed one tensor at a time (nothing but the table is held).

use std::io::{self, Seek, Write};

use super::gguf::Value;
use super::GgmlType;

const ALIGNMENT: u64 = 32;

/// A tensor to be written: its name, shape (outermost first) and type.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
}

impl PlannedTensor {
    fn bytes(&self) -> io::Result<u64> {
        let elems = self
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: its shape overflows", self.name),
                )
            })?;
        self.ggml_type.bytes_for(elems).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: {elems} values are not whole {} blocks",
                    self.name, self.ggml_type
                ),
            )
        })
    }
}

/// Writes the header and table up front (every tensor's size is known from
/// its shape and type), then takes each tensor's bytes in table order.
pub struct GgufWriter<W: Write + Seek> {
    out: W,
    tensors: Vec<PlannedTensor>,
    next: usize,
}

fn put_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => out.write_all(&[*x]),
        Value::I8(x) => out.write_all(&x.to_le_bytes()),
        Value::U16(x) => out.write_all(&x.to_le_bytes()),
        Value::I16(x) => out.write_all(&x.to_le_bytes()),
        Value::U32(x) => out.write_all(&x.to_le_bytes()),
        Value::I32(x) => out.write_all(&x.to_le_bytes()),
        Value::U64(x) => out.write_all(&x.to_le_bytes()),
        Value::I64(x) => out.write_all(&x.to_le_bytes()),
        Value::F32(x) => out.write_all(&x.to_le_bytes()),
        Value::F64(x) => out.write_all(&x.to_le_bytes()),
        Value::Bool(x) => out.write_all(&[u8::from(*x)]),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            let inner = items.first().map_or(8, type_id);
            out.write_all(&inner.to_le_bytes())?;
            out.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|i| put_value(out, i))
        }
    }
}

impl<W: Write + Seek> GgufWriter<W> {
    pub fn new(
        mut out: W,
        metadata: &[(String, Value)],
        tensors: Vec<PlannedTensor>,
    ) -> io::Result<Self> {
        out.write_all(b"GGUF")?;
        out.write_all(&3u32.to_le_bytes())?;
        out.write_all(&(tensors.len() as u64).to_le_bytes())?;
        out.write_all(&(metadata.len() as u64 + 1).to_le_bytes())?;
        put_str(&mut out, "general.alignment")?;
        out.write_all(&4u32.to_le_bytes())?;
        out.write_all(&(ALIGNMENT as u32).to_le_bytes())?;
        for (k, v) in metadata {
            put_str(&mut out, k)?;
            out.write_all(&type_id(v).to_le_bytes())?;
            put_value(&mut out, v)?;
        }
        let mut offset = 0u64;
        for t in &tensors {
            put_str(&mut out, &t.name)?;
            out.write_all(&(t.shape.len() as u32).to_le_bytes())?;
            for &d in t.shape.iter().rev() {
                out.write_all(&(d as u64).to_le_bytes())?;
            }
            out.write_all(&t.ggml_type.id().to_le_bytes())?;
            out.write_all(&offset.to_le_bytes())?;
            offset = offset
                .checked_add(t.bytes()?)
                .and_then(|o| o.checked_next_multiple_of(ALIGNMENT))
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "tensors overflow"))?;
        }
        let pos = out.stream_position()?;
        let data_start = pos.div_ceil(ALIGNMENT) * ALIGNMENT;
        out.write_all(&vec![0u8; (data_start - pos) as usize])?;
        Ok(GgufWriter {
            out,
            tensors,
            next: 0,
        })
    }

    /// The next tensor of the table (its bytes must match its type).
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.write_tensor_with(name, &mut |out| {
            out.write_all(bytes)?;
            Ok(bytes.len() as u64)
        })
    }

    /// The next tensor of the table, streamed: `fill` writes its bytes (in
    /// as many pieces as it likes) and returns how many it wrote, which must
    /// be the planned size.
    pub fn write_tensor_with(
        &mut self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<u64>,
    ) -> io::Result<()> {
        let t = self.tensors.get(self.next).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: more tensors than planned"),
            )
        })?;
        let planned = t.bytes()?;
        if t.name != name {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} written where {} was planned", t.name),
            ));
        }
        let written = fill(&mut self.out)?;
        if written != planned {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: {written} bytes written where {planned} were planned"),
            ));
        }
        let pad = written.div_ceil(ALIGNMENT) * ALIGNMENT - written;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.next += 1;
        Ok(())
    }

    /// The header and table written so far, without any tensor bytes
    /// (the fuzzer appends the bytes of the file it mutates).
    pub fn into_header(self) -> W {
        self.out
    }

    /// Checks every tensor was written and hands the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        if self.next != self.tensors.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} of {} tensors written", self.next, self.tensors.len()),
            ));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}
