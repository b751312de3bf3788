//! The KV cache's storage types (llama.cpp's `--cache-type-k/-v` names)
//! and attention that reads them in place: each key and value row is
//! decoded in registers as the scores and the weighted sum stream past it,
//! never into a dequantized copy.
//!
//! A row is one KV head's `head_dim` values at one position: `f32`, `f16`,
//! or 32-value blocks of `q8_0` (an f16 scale and 32 signed bytes) or `q4_0`
//! (an f16 scale and 16 bytes of 4-bit values, element `j` in the low
//! nibble of byte `j`, element `j + 16` in its high nibble), as ggml stores
//! them, quantized as ggml's reference quantizers do.

use super::isa::{self, Isa, UnsupportedIsa};
use half::f16;

/// How the cache stores keys or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheType {
    F32,
    #[default]
    F16,
    Q8_0,
    Q4_0,
}

/// The storage types of keys and of values (K is the more sensitive: a
/// common choice is `q8_0` keys with `q4_0` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct KvTypes {
    pub k: CacheType,
    pub v: CacheType,
}

impl KvTypes {
    pub const F32: KvTypes = KvTypes {
        k: CacheType::F32,
        v: CacheType::F32,
    };

    pub fn new(k: CacheType, v: CacheType) -> Self {
        KvTypes { k, v }
    }

    /// Bytes of one position of one KV head: a key row and a value row.
    pub fn row_bytes(self, hd: usize) -> usize {
        self.k.row_bytes(hd) + self.v.row_bytes(hd)
    }

    pub fn check(self, hd: usize) -> Result<(), String> {
        self.k.check(hd)?;
        self.v.check(hd)
    }

    /// What the GPU tier stores: its attention runs on the device's own
    /// matmuls, which read f32 and f16; block types are kept as f16 there.
    pub fn on_gpu(self) -> KvTypes {
        let dev = |t: CacheType| if t.is_quantized() { CacheType::F16 } else { t };
        KvTypes::new(dev(self.k), dev(self.v))
    }
}

impl KvTypes {
    /// Keys stored in a block type are rotated first by an orthonormal
    /// Walsh–Hadamard transform over blocks of this many values (the head
    /// size's largest power-of-two factor, at least 64), queries likewise,
    /// so scores are unchanged while an outlier's energy spreads over its
    /// block before quantizing (the QuaRot idea; llama.cpp does the same
    /// for quantized caches). `None` for f32/f16 keys or odd head sizes.
    pub fn k_rotation(self, hd: usize) -> Option<usize> {
        (self.k.is_quantized() && hd.is_multiple_of(64)).then(|| 1 << hd.trailing_zeros())
    }

    /// Values stored in a block type are rotated in blocks of 64, and the
    /// attention output rotated back (the transform is its own inverse).
    pub fn v_rotation(self, hd: usize) -> Option<usize> {
        (self.v.is_quantized() && hd.is_multiple_of(64)).then_some(64)
    }
}

/// The orthonormal Walsh–Hadamard transform of each `block`-value chunk of
/// `x` (`block` a power of two), in place; applying it twice gives `x`.
pub fn hadamard(x: &mut [f32], block: usize) {
    debug_assert!(block.is_power_of_two());
    let norm = 1.0 / (block as f32).sqrt();
    for b in x.chunks_exact_mut(block) {
        let mut h = 1;
        while h < block {
            for i in (0..block).step_by(2 * h) {
                for j in i..i + h {
                    let (a, c) = (b[j], b[j + h]);
                    b[j] = a + c;
                    b[j + h] = a - c;
                }
            }
            h *= 2;
        }
        b.iter_mut().for_each(|v| *v *= norm);
    }
}

impl std::fmt::Display for KvTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "K {} / V {}", self.k, self.v)
    }
}

/// Values per quantization block.
pub const QK: usize = 32;

impl CacheType {
    pub const ALL: [CacheType; 4] = [
        CacheType::F32,
        CacheType::F16,
        CacheType::Q8_0,
        CacheType::Q4_0,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CacheType::F32 => "f32",
            CacheType::F16 => "f16",
            CacheType::Q8_0 => "q8_0",
            CacheType::Q4_0 => "q4_0",
        }
    }

    pub fn parse(s: &str) -> Result<CacheType, String> {
        CacheType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("`{s}` is not a KV cache type (f32, f16, q8_0 or q4_0)"))
    }

    /// Bytes of a row of `hd` values (`hd` checked by [`CacheType::check`]).
    pub fn row_bytes(self, hd: usize) -> usize {
        match self {
            CacheType::F32 => 4 * hd,
            CacheType::F16 => 2 * hd,
            CacheType::Q8_0 => hd / QK * 34,
            CacheType::Q4_0 => hd / QK * 18,
        }
    }

    /// Whether rows of `hd` values can be stored in this type.
    pub fn check(self, hd: usize) -> Result<(), String> {
        match self {
            CacheType::Q8_0 | CacheType::Q4_0 if !hd.is_multiple_of(QK) => Err(format!(
                "a {} KV cache needs a head size that is a multiple of {QK}; this model's is {hd} (use f16 or f32)",
                self.name()
            )),
            _ => Ok(()),
        }
    }

    /// Whether the type is a block-quantized one.
    pub fn is_quantized(self) -> bool {
        matches!(self, CacheType::Q8_0 | CacheType::Q4_0)
    }

    /// Stores `src` (a multiple of the row length) into `dst`.
    pub fn encode(self, src: &[f32], dst: &mut [u8]) {
        match self {
            CacheType::F32 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                    d.copy_from_slice(&s.to_le_bytes());
                }
            }
            CacheType::F16 => {
                for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                    d.copy_from_slice(&f16::from_f32(*s).to_le_bytes());
                }
            }
            CacheType::Q8_0 => {
                for (d, s) in dst.chunks_exact_mut(34).zip(src.chunks_exact(QK)) {
                    let amax = s.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let scale = amax / 127.0;
                    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                    d[..2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
                    for (q, x) in d[2..].iter_mut().zip(s) {
                        *q = ((x * inv).round() as i8) as u8;
                    }
                }
            }
            CacheType::Q4_0 => {
                for (d, s) in dst.chunks_exact_mut(18).zip(src.chunks_exact(QK)) {
                    // The value of largest magnitude, sign kept, maps to -8.
                    let max = s
                        .iter()
                        .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
                    let scale = max / -8.0;
                    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                    d[..2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
                    let q = |x: f32| ((x * inv + 8.5) as u8).min(15);
                    for j in 0..QK / 2 {
                        d[2 + j] = q(s[j]) | (q(s[j + QK / 2]) << 4);
                    }
                }
            }
        }
    }

    /// Reads `dst.len()` values (whole rows) back from `src`.
    pub fn decode(self, src: &[u8], dst: &mut [f32]) {
        match self {
            CacheType::F32 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
            }
            CacheType::F16 if (src.as_ptr() as usize).is_multiple_of(2) => {
                use half::slice::HalfFloatSliceExt;
                let n = dst.len().min(src.len() / 2);
                // SAFETY: aligned (checked), in bounds; any bits are an f16.
                let h = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<f16>(), n) };
                h.convert_to_f32_slice(&mut dst[..n]);
            }
            CacheType::F16 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
                }
            }
            CacheType::Q8_0 => {
                for (d, s) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(34)) {
                    let scale = f16::from_le_bytes([s[0], s[1]]).to_f32();
                    for (o, &q) in d.iter_mut().zip(&s[2..]) {
                        *o = q as i8 as f32 * scale;
                    }
                }
            }
            CacheType::Q4_0 => {
                for (d, s) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(18)) {
                    let scale = f16::from_le_bytes([s[0], s[1]]).to_f32();
                    for j in 0..QK / 2 {
                        d[j] = ((s[2 + j] & 15) as i32 - 8) as f32 * scale;
                        d[j + QK / 2] = ((s[2 + j] >> 4) as i32 - 8) as f32 * scale;
                    }
                }
            }
        }
    }
}

impl std::fmt::Display for CacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CacheType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CacheType::parse(s)
    }
}

/// One KV head's cached rows: `len` rows of `hd` values in type `ty`, the
/// first for the first position attended to.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub ty: CacheType,
    pub bytes: &'a [u8],
    pub hd: usize,
}

impl Rows<'_> {
    fn row(&self, j: usize) -> &[u8] {
        let rb = self.ty.row_bytes(self.hd);
        &self.bytes[j * rb..(j + 1) * rb]
    }
}

/// Attention of one query row over `scores.len()` cached rows of one KV
/// head: `out = softmax(scale · K q) · V`. `scores` is scratch.
pub fn attend(
    q: &[f32],
    k: Rows<'_>,
    v: Rows<'_>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_on(isa::active(), q, k, v, scale, scores, out)
}

/// [`attend`] on a given ISA (tests compare every level the CPU has); an
/// ISA this CPU lacks is an error.
pub fn attend_with(
    isa: Isa,
    q: &[f32],
    k: Rows<'_>,
    v: Rows<'_>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<(), UnsupportedIsa> {
    isa.check()?;
    attend_on(isa, q, k, v, scale, scores, out);
    Ok(())
}

fn attend_on(
    isa: Isa,
    q: &[f32],
    k: Rows<'_>,
    v: Rows<'_>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (len, hd) = (scores.len(), k.hd);
    assert!(
        v.hd == hd
            && q.len() >= hd
            && out.len() >= hd
            && k.bytes.len() >= len * k.ty.row_bytes(hd)
            && v.bytes.len() >= len * v.ty.row_bytes(hd)
    );
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar && hd.is_multiple_of(8) {
        // SAFETY: the ISA is supported (checked or active); sizes asserted.
        // f32/f32 is the generic kernel's f32 instance: the f32 kernel bit
        // for bit.
        return unsafe { super::x86::kv::attend(q, k, v, scale, scores, out) };
    }
    if k.ty == CacheType::F32 && v.ty == CacheType::F32 {
        // The scalar f32 kernel as it always was (bit for bit).
        // SAFETY: f32 rows are stored in 4-byte aligned buffers.
        let (kf, vf) = unsafe { (as_f32(k.bytes), as_f32(v.bytes)) };
        return super::ops::attend_with(isa, q, kf, vf, hd, scale, scores, out)
            .expect("the ISA was checked");
    }
    // Scalar: one decoded row at a time on the stack.
    let mut row = [0f32; 512];
    let mut heap = Vec::new();
    let row: &mut [f32] = if hd <= row.len() {
        &mut row[..hd]
    } else {
        heap.resize(hd, 0.0);
        &mut heap
    };
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores.iter_mut().enumerate() {
        k.ty.decode(k.row(j), row);
        *s = row.iter().zip(&q[..hd]).map(|(a, b)| a * b).sum::<f32>() * scale;
        max = max.max(*s);
    }
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = super::ops::exp_scalar(*s - max);
        sum += *s;
    }
    let inv = 1.0 / sum;
    let out = &mut out[..hd];
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        v.ty.decode(v.row(j), row);
        for (o, x) in out.iter_mut().zip(row.iter()) {
            *o += p * inv * x;
        }
    }
}

/// Keys of one tile of tiled (flash) attention: the row stride of a tile's
/// scores and of its transposed keys.
pub const TILE_KEYS: usize = 64;

/// Scores of a tile: `s[r·TILE_KEYS + j] = q_r · k_j` for every query row
/// `r < rows` (`q`: `rows × hd`, already scaled) and every key `j <
/// TILE_KEYS` of the tile, whose keys come transposed (`kt[d·TILE_KEYS +
/// j]`, unused columns zero). Register-blocked: six rows × sixteen keys of
/// accumulators, each key vector loaded once for six rows.
pub fn tile_scores(q: &[f32], rows: usize, hd: usize, kt: &[f32], s: &mut [f32]) {
    tile_scores_on(isa::active(), q, rows, hd, kt, s)
}

/// [`tile_scores`] on a given ISA; an ISA this CPU lacks is an error.
pub fn tile_scores_with(
    isa: Isa,
    q: &[f32],
    rows: usize,
    hd: usize,
    kt: &[f32],
    s: &mut [f32],
) -> Result<(), UnsupportedIsa> {
    isa.check()?;
    tile_scores_on(isa, q, rows, hd, kt, s);
    Ok(())
}

fn tile_scores_on(isa: Isa, q: &[f32], rows: usize, hd: usize, kt: &[f32], s: &mut [f32]) {
    assert!(q.len() >= rows * hd && kt.len() >= hd * TILE_KEYS && s.len() >= rows * TILE_KEYS);
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: the ISA is supported (checked or active); sizes asserted.
        return unsafe {
            super::x86::kv::tile_scores(q.as_ptr(), rows, hd, kt.as_ptr(), s.as_mut_ptr())
        };
    }
    let _ = isa;
    for r in 0..rows {
        let sr = &mut s[r * TILE_KEYS..(r + 1) * TILE_KEYS];
        sr.fill(0.0);
        for (d, &x) in q[r * hd..(r + 1) * hd].iter().enumerate() {
            for (o, k) in sr.iter_mut().zip(&kt[d * TILE_KEYS..(d + 1) * TILE_KEYS]) {
                *o += x * k;
            }
        }
    }
}

/// The weighted values of a tile: `o_r += Σ_{j<keys} p[r·TILE_KEYS + j] ·
/// v_j` for every row `r < rows` (`v`: `keys × hd`, `o`: `rows × hd`).
/// Register-blocked like [`tile_scores`]: six rows × sixteen dimensions of
/// the output stay in registers while the tile's values stream past.
pub fn tile_accumulate(p: &[f32], rows: usize, keys: usize, v: &[f32], hd: usize, o: &mut [f32]) {
    tile_accumulate_on(isa::active(), p, rows, keys, v, hd, o)
}

/// [`tile_accumulate`] on a given ISA; an ISA this CPU lacks is an error.
pub fn tile_accumulate_with(
    isa: Isa,
    p: &[f32],
    rows: usize,
    keys: usize,
    v: &[f32],
    hd: usize,
    o: &mut [f32],
) -> Result<(), UnsupportedIsa> {
    isa.check()?;
    tile_accumulate_on(isa, p, rows, keys, v, hd, o);
    Ok(())
}

fn tile_accumulate_on(
    isa: Isa,
    p: &[f32],
    rows: usize,
    keys: usize,
    v: &[f32],
    hd: usize,
    o: &mut [f32],
) {
    assert!(
        keys <= TILE_KEYS
            && p.len() >= rows * TILE_KEYS
            && v.len() >= keys * hd
            && o.len() >= rows * hd
    );
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar && hd.is_multiple_of(8) {
        // SAFETY: the ISA is supported (checked or active); sizes asserted.
        return unsafe {
            super::x86::kv::tile_accumulate(p.as_ptr(), rows, keys, v.as_ptr(), hd, o.as_mut_ptr())
        };
    }
    let _ = isa;
    for r in 0..rows {
        let or = &mut o[r * hd..(r + 1) * hd];
        for (j, &w) in p[r * TILE_KEYS..r * TILE_KEYS + keys].iter().enumerate() {
            for (x, y) in or.iter_mut().zip(&v[j * hd..(j + 1) * hd]) {
                *x += w * y;
            }
        }
    }
}

/// The floats of an f32 row buffer.
///
/// # Safety
/// `b` must start 4-byte aligned (the cache's buffers are `f32` vectors).
unsafe fn as_f32(b: &[u8]) -> &[f32] {
    debug_assert!((b.as_ptr() as usize).is_multiple_of(4));
    std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// f32 storage round-trips exactly, f16 within its rounding, the block
    /// types within half a step of their block's scale; the quantizers
    /// match ggml's reference rounding on known values.
    #[test]
    fn every_type_round_trips_within_its_step() {
        let x = values(4 * 64, 7);
        for ty in CacheType::ALL {
            let mut b = vec![0u8; 4 * ty.row_bytes(64)];
            ty.encode(&x, &mut b);
            let mut y = vec![0f32; x.len()];
            ty.decode(&b, &mut y);
            for (blk, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let tol = match ty {
                    CacheType::F32 => 0.0,
                    CacheType::F16 => amax / 1024.0,
                    CacheType::Q8_0 => amax / 127.0 * 0.51,
                    // The clamped end of the range (+8 steps is 7) loses a step.
                    CacheType::Q4_0 => amax / 8.0 * 1.01,
                };
                for (a, b) in xs.iter().zip(ys) {
                    assert!(
                        (a - b).abs() <= tol + amax * 1e-3 * (ty != CacheType::F32) as u8 as f32,
                        "{ty} block {blk}: {a} vs {b}"
                    );
                }
            }
        }
        // ggml: q8_0 of [1, -0.5, 0, …] is scale 1/127, values 127, -64
        // (round half away from zero), 0.
        let mut one = vec![0f32; 32];
        one[0] = 1.0;
        one[1] = -0.5;
        let mut b = vec![0u8; 34];
        CacheType::Q8_0.encode(&one, &mut b);
        assert_eq!((b[2] as i8, b[3] as i8, b[4] as i8), (127, -64, 0));
        // q4_0: the largest magnitude (-1) maps to 0 (that is, -8), zero
        // to 8, 0.5 to 4.
        one[0] = -1.0;
        one[1] = 0.5;
        let mut b = vec![0u8; 18];
        CacheType::Q4_0.encode(&one, &mut b);
        assert_eq!((b[2] & 15, b[3] & 15, b[4] & 15), (0, 12, 8));
        assert_eq!(CacheType::parse("Q8_0"), Ok(CacheType::Q8_0));
        assert!(CacheType::parse("q5_1").is_err());
        assert!(CacheType::Q4_0.check(80).is_err());
        assert!(CacheType::F16.check(80).is_ok());
    }

    /// The transform is orthonormal and its own inverse: dot products are
    /// kept, and a vector comes back.
    #[test]
    fn hadamard_keeps_dot_products_and_inverts_itself() {
        let (a, b) = (values(128, 4), values(128, 5));
        let (mut ha, mut hb) = (a.clone(), b.clone());
        hadamard(&mut ha, 128);
        hadamard(&mut hb, 128);
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        assert!((dot(&a, &b) - dot(&ha, &hb)).abs() < 1e-4);
        hadamard(&mut ha, 128);
        for (x, y) in a.iter().zip(&ha) {
            assert!((x - y).abs() < 1e-5);
        }
        let t = KvTypes::new(CacheType::Q4_0, CacheType::Q8_0);
        assert_eq!(
            (t.k_rotation(64), t.k_rotation(192), t.k_rotation(256)),
            (Some(64), Some(64), Some(256))
        );
        assert_eq!((t.v_rotation(128), t.v_rotation(96)), (Some(64), None));
        assert_eq!(KvTypes::default().k_rotation(128), None);
    }

    /// Attention over each stored type, K and V separately, on every ISA
    /// the host has, equals f32 attention over the decoded rows (the same
    /// numbers: reading in place changes nothing but the memory read), and
    /// an ISA the host lacks is refused.
    #[test]
    fn attention_on_every_cache_type_matches_f32_attention_of_its_rows() {
        for hd in [32usize, 64, 128, 40] {
            for len in [1usize, 3, 4, 7, 33] {
                let q = values(hd, 1);
                let k = values(len * hd, 2);
                let v = values(len * hd, 3);
                for kt in CacheType::ALL {
                    for vt in CacheType::ALL {
                        if kt.check(hd).is_err() || vt.check(hd).is_err() {
                            continue;
                        }
                        let enc = |ty: CacheType, x: &[f32]| {
                            // 4-byte aligned, as the cache allocates.
                            let mut w = vec![0f32; (len * ty.row_bytes(hd)).div_ceil(4)];
                            let b = unsafe {
                                std::slice::from_raw_parts_mut(
                                    w.as_mut_ptr().cast::<u8>(),
                                    len * ty.row_bytes(hd),
                                )
                            };
                            ty.encode(x, b);
                            let mut back = vec![0f32; x.len()];
                            ty.decode(b, &mut back);
                            (w, back)
                        };
                        let (kw, kf) = enc(kt, &k);
                        let (vw, vf) = enc(vt, &v);
                        let bytes = |w: &Vec<f32>, ty: CacheType| unsafe {
                            std::slice::from_raw_parts(
                                w.as_ptr().cast::<u8>(),
                                len * ty.row_bytes(hd),
                            )
                        };
                        let mut want = vec![0f32; hd];
                        let mut sc = vec![0f32; len];
                        super::super::ops::attend_with(
                            Isa::Scalar,
                            &q,
                            &kf,
                            &vf,
                            hd,
                            0.125,
                            &mut sc,
                            &mut want,
                        )
                        .unwrap();
                        for isa in Isa::available() {
                            let mut got = vec![0f32; hd];
                            attend_with(
                                isa,
                                &q,
                                Rows {
                                    ty: kt,
                                    bytes: bytes(&kw, kt),
                                    hd,
                                },
                                Rows {
                                    ty: vt,
                                    bytes: bytes(&vw, vt),
                                    hd,
                                },
                                0.125,
                                &mut sc,
                                &mut got,
                            )
                            .unwrap();
                            for (a, b) in got.iter().zip(&want) {
                                assert!(
                                    (a - b).abs() < 1e-5,
                                    "{kt}/{vt} hd {hd} len {len} {isa:?}: {a} vs {b}"
                                );
                            }
                        }
                    }
                }
            }
        }
        let missing = [Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .find(|i| !i.supported());
        if let Some(isa) = missing {
            let r = Rows {
                ty: CacheType::F16,
                bytes: &[0u8; 64],
                hd: 32,
            };
            assert!(attend_with(isa, &[0.0; 32], r, r, 1.0, &mut [0.0], &mut [0.0; 32]).is_err());
        }
    }

    /// The tile kernels against the plain definition of a product, on every
    /// ISA the host has, for row counts around the six-row blocks, head
    /// sizes with and without a sixteen-wide remainder (and one the SIMD
    /// path leaves to scalar), and partial tiles; a missing ISA is refused.
    #[test]
    fn tile_kernels_match_the_plain_products() {
        for hd in [8usize, 24, 64, 72, 12] {
            for rows in [1usize, 5, 6, 7, 13, 48] {
                for keys in [1usize, 17, TILE_KEYS] {
                    let q = values(rows * hd, 3);
                    let mut kt = values(hd * TILE_KEYS, 5);
                    for d in 0..hd {
                        kt[d * TILE_KEYS + keys..(d + 1) * TILE_KEYS].fill(0.0);
                    }
                    let p = values(rows * TILE_KEYS, 9);
                    let v = values(keys * hd, 11);
                    let o0 = values(rows * hd, 13);
                    for isa in Isa::available() {
                        let mut s = vec![f32::NAN; rows * TILE_KEYS];
                        tile_scores_with(isa, &q, rows, hd, &kt, &mut s).unwrap();
                        let mut o = o0.clone();
                        tile_accumulate_with(isa, &p, rows, keys, &v, hd, &mut o).unwrap();
                        for r in 0..rows {
                            for j in 0..TILE_KEYS {
                                let want: f32 =
                                    (0..hd).map(|d| q[r * hd + d] * kt[d * TILE_KEYS + j]).sum();
                                let got = s[r * TILE_KEYS + j];
                                assert!(
                                    (got - want).abs() < 1e-4,
                                    "scores hd {hd} rows {rows} {isa:?} ({r},{j}): {got} vs {want}"
                                );
                            }
                            for d in 0..hd {
                                let want = o0[r * hd + d]
                                    + (0..keys)
                                        .map(|j| p[r * TILE_KEYS + j] * v[j * hd + d])
                                        .sum::<f32>();
                                let got = o[r * hd + d];
                                assert!(
                                    (got - want).abs() < 1e-4,
                                    "values hd {hd} rows {rows} keys {keys} {isa:?}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
        let missing = [Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .find(|i| !i.supported());
        if let Some(isa) = missing {
            let (q, kt, mut s) = ([0f32; 8], [0f32; 8 * TILE_KEYS], [0f32; TILE_KEYS]);
            assert!(tile_scores_with(isa, &q, 1, 8, &kt, &mut s).is_err());
            assert!(tile_accumulate_with(isa, &s, 1, 1, &q, 8, &mut [0f32; 8]).is_err());
        }
    }
}
