//! Reading tensor bytes from a file region straight into candle storage.
//!
//! Bytes go from the file into the final typed block vector with one
//! positioned read: no staging copy, no memory map. That matters for the disk
//! tier, whose bytes must leave resident memory when the layer is released:
//! a mapped file would keep them in the process's resident set until the
//! kernel chose to drop them.

use std::fs::File;
use std::io;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use candle_core::quantized::{GgmlType as CandleBlock, QStorage, QTensor, QuantizedType};
use candle_core::{Device, Tensor};

use super::gguf::TensorInfo;
use super::GgmlType;
use crate::placement::alloc::{zeroed_vec, ZeroValid};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read tensor '{name}': {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tensor '{name}': {source}")]
    Candle {
        name: String,
        #[source]
        source: candle_core::Error,
    },
}

/// Positioned read of exactly `buf.len()` bytes, on every platform.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0usize;
        while done < buf.len() {
            let n = std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buf[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
}

/// Zero is a valid value of every GGML block type: they are plain integers
/// and floats.
macro_rules! zero_valid {
    ($($t:ty),*) => { $(
        // SAFETY: see above.
        unsafe impl ZeroValid for $t {}
    )* };
}
zero_valid!(
    half::f16,
    half::bf16,
    BlockQ4_0,
    BlockQ4_1,
    BlockQ5_0,
    BlockQ5_1,
    BlockQ8_0,
    BlockQ8_1,
    BlockQ2K,
    BlockQ3K,
    BlockQ4K,
    BlockQ5K,
    BlockQ6K,
    BlockQ8K
);

fn blocks<T: CandleBlock + ZeroValid + 'static>(
    size_bytes: usize,
    fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
) -> io::Result<Box<dyn QuantizedType>> {
    let block = std::mem::size_of::<T>();
    if block == 0 || !size_bytes.is_multiple_of(block) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "size is not a whole number of blocks",
        ));
    }
    let mut v = zeroed_vec::<T>(size_bytes / block)?;
    // SAFETY: the block types are `repr(C)` plain data with no padding
    // invariants; any byte pattern is a valid value, and the slice covers
    // exactly the vector's initialised elements.
    let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), size_bytes) };
    fill(bytes)?;
    Ok(Box::new(v))
}

/// A CPU [`QTensor`] of `info`'s type and shape whose bytes `fill` writes.
fn qtensor_filled(
    info: &TensorInfo,
    fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
) -> Result<QTensor, ReadError> {
    let io_err = |source| ReadError::Io {
        name: info.name.clone(),
        source,
    };
    let size = usize::try_from(info.size_bytes).map_err(|_| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidData,
            "tensor too large",
        ))
    })?;
    let storage = match info.ggml_type {
        GgmlType::F32 => blocks::<f32>(size, fill),
        GgmlType::F16 => blocks::<half::f16>(size, fill),
        GgmlType::BF16 => blocks::<half::bf16>(size, fill),
        GgmlType::Q4_0 => blocks::<BlockQ4_0>(size, fill),
        GgmlType::Q4_1 => blocks::<BlockQ4_1>(size, fill),
        GgmlType::Q5_0 => blocks::<BlockQ5_0>(size, fill),
        GgmlType::Q5_1 => blocks::<BlockQ5_1>(size, fill),
        GgmlType::Q8_0 => blocks::<BlockQ8_0>(size, fill),
        GgmlType::Q8_1 => blocks::<BlockQ8_1>(size, fill),
        GgmlType::Q2K => blocks::<BlockQ2K>(size, fill),
        GgmlType::Q3K => blocks::<BlockQ3K>(size, fill),
        GgmlType::Q4K => blocks::<BlockQ4K>(size, fill),
        GgmlType::Q5K => blocks::<BlockQ5K>(size, fill),
        GgmlType::Q6K => blocks::<BlockQ6K>(size, fill),
        GgmlType::Q8K => blocks::<BlockQ8K>(size, fill),
    }
    .map_err(io_err)?;
    QTensor::new(QStorage::Cpu(storage), info.shape.clone()).map_err(|source| ReadError::Candle {
        name: info.name.clone(),
        source,
    })
}

/// Reads one tensor, described by `info` (offset relative to `file`), into a
/// CPU [`QTensor`] of its stored type.
pub fn read_qtensor(file: &File, info: &TensorInfo) -> Result<QTensor, ReadError> {
    qtensor_filled(info, &mut |b| read_exact_at(file, b, info.file_offset))
}

/// A CPU [`QTensor`] of `info`'s type and shape holding a copy of `bytes`.
pub fn qtensor_from_bytes(info: &TensorInfo, bytes: &[u8]) -> Result<QTensor, ReadError> {
    qtensor_filled(info, &mut |b| {
        if b.len() != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "byte count does not match the shape",
            ));
        }
        b.copy_from_slice(bytes);
        Ok(())
    })
}

/// Reads a small tensor (norm weights, biases) as an f32 [`Tensor`].
pub fn read_f32_tensor(file: &File, info: &TensorInfo) -> Result<Tensor, ReadError> {
    let q = read_qtensor(file, info)?;
    q.dequantize(&Device::Cpu)
        .map_err(|source| ReadError::Candle {
            name: info.name.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::gguf::{tests::write_gguf, GgufFile};

    #[test]
    fn reads_f32_values_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let vals: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        write_gguf(&p, &[], &[("w", vec![3, 4], vals.clone())]);
        let g = GgufFile::open(&p).unwrap();
        let f = File::open(&p).unwrap();
        let t = read_f32_tensor(&f, g.tensor("w").unwrap()).unwrap();
        assert_eq!(t.dims(), &[3, 4]);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vals);
    }
}
