//! The vision tower's attention on Spillway's kernels: bidirectional
//! attention within segments of patches (Qwen2.5-VL's windows, a whole
//! frame for its full-attention blocks and for Qwen3-VL), tiled like the
//! text model's long-prompt attention.
//!
//! Each head's keys are packed once per call into transposed tiles of
//! [`TILE_KEYS`] (zero past a segment's end) and its values into rows; a
//! task takes one head's [`QUERY_ROWS`] queries of one segment and walks
//! that segment's tiles with a running softmax per row, the scores and the
//! weighted values as the register-blocked products of
//! [`crate::kernels::kv::tile_scores`] and [`tile_accumulate`]. Memory is
//! the packed keys and values (the size of `k` and `v`) plus a tile per
//! thread — never a segment² score matrix, however large the image.

use crate::kernels::kv::{tile_accumulate, tile_scores, TILE_KEYS};
use crate::kernels::matmul::Out;
use crate::kernels::ops;
use crate::kernels::pool::{self, Tasks};

/// Query rows per task: a multiple of the score kernel's six-row block.
const QUERY_ROWS: usize = 48;

/// Attention of `n` patches whose rows of `qkv` hold `[q | k | v]`, each
/// `heads × hd` (rotary embedding already applied), within the segments
/// `cu` (cumulative patch counts from 0 to `n`): every query attends to
/// every key of its segment. Writes `n × heads·hd` into `out`.
pub fn segment_attention(
    qkv: &[f32],
    n: usize,
    heads: usize,
    hd: usize,
    cu: &[usize],
    out: &mut [f32],
) -> Result<(), String> {
    let width = heads * hd;
    if qkv.len() != n * 3 * width || out.len() != n * width || hd == 0 {
        return Err(format!(
            "attention over {n} patches of {heads}×{hd}: {} inputs, {} outputs",
            qkv.len(),
            out.len()
        ));
    }
    if cu.first() != Some(&0) || cu.last() != Some(&n) || cu.windows(2).any(|w| w[0] > w[1]) {
        return Err(format!(
            "attention segments {cu:?} do not cover {n} patches"
        ));
    }
    // The key tiles: (first key, keys) per tile, each segment's from its own
    // first tile on; `first_tile[s]` is segment s's first.
    let mut tiles = Vec::new();
    let mut first_tile = Vec::with_capacity(cu.len());
    for seg in cu.windows(2) {
        first_tile.push(tiles.len());
        let mut k0 = seg[0];
        while k0 < seg[1] {
            let k1 = (k0 + TILE_KEYS).min(seg[1]);
            tiles.push((k0, k1 - k0));
            k0 = k1;
        }
    }
    first_tile.push(tiles.len());
    let tile_len = hd * TILE_KEYS;
    // Per head: every tile's keys transposed (`[d][j]`), and the values in
    // patch order.
    let mut kt = vec![0f32; heads * tiles.len() * tile_len];
    let mut vs = vec![0f32; heads * n * hd];
    let (kt_out, vs_out) = (Out(kt.as_mut_ptr()), Out(vs.as_mut_ptr()));
    let pack = Tasks::new(heads * tiles.len());
    pool::run(&|_| {
        while let Some(task) = pack.next() {
            let (h, t) = (task / tiles.len(), task % tiles.len());
            let (k0, keys) = tiles[t];
            let base = (h * tiles.len() + t) * tile_len;
            for j in 0..keys {
                let row = (k0 + j) * 3 * width;
                let key = &qkv[row + width + h * hd..row + width + (h + 1) * hd];
                let value = &qkv[row + 2 * width + h * hd..row + 2 * width + (h + 1) * hd];
                for (d, &x) in key.iter().enumerate() {
                    // SAFETY: tile t of head h is this task's alone.
                    unsafe { *kt_out.ptr().add(base + d * TILE_KEYS + j) = x };
                }
                // SAFETY: patch k0 + j of head h belongs to tile t, this
                // task's alone.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(vs_out.ptr().add((h * n + k0 + j) * hd), hd)
                };
                dst.copy_from_slice(value);
            }
        }
    });
    // The query tasks: (segment, first query, rows) per head.
    let mut blocks = Vec::new();
    for (s, seg) in cu.windows(2).enumerate() {
        let mut q0 = seg[0];
        while q0 < seg[1] {
            let rows = QUERY_ROWS.min(seg[1] - q0);
            blocks.push((s, q0, rows));
            q0 += rows;
        }
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let dst = Out(out.as_mut_ptr());
    let work = Tasks::new(heads * blocks.len());
    let (kt, vs) = (&kt, &vs);
    pool::run(&|_| {
        let mut q = vec![0f32; QUERY_ROWS * hd];
        let mut acc = vec![0f32; QUERY_ROWS * hd];
        let mut scores = vec![0f32; QUERY_ROWS * TILE_KEYS];
        let mut max = [0f32; QUERY_ROWS];
        let mut sum = [0f32; QUERY_ROWS];
        while let Some(task) = work.next() {
            let (h, (s, q0, rows)) = (task / blocks.len(), blocks[task % blocks.len()]);
            for r in 0..rows {
                let src = (q0 + r) * 3 * width + h * hd;
                for (d, x) in q[r * hd..(r + 1) * hd].iter_mut().zip(&qkv[src..src + hd]) {
                    *d = x * scale;
                }
            }
            acc[..rows * hd].fill(0.0);
            max[..rows].fill(f32::NEG_INFINITY);
            sum[..rows].fill(0.0);
            for t in first_tile[s]..first_tile[s + 1] {
                let (k0, keys) = tiles[t];
                let tile = &kt[(h * tiles.len() + t) * tile_len..][..tile_len];
                tile_scores(&q, rows, hd, tile, &mut scores);
                for r in 0..rows {
                    let sc = &mut scores[r * TILE_KEYS..r * TILE_KEYS + keys];
                    let m = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                    if m > max[r] {
                        let c = ops::exp_scalar(max[r] - m);
                        sum[r] *= c;
                        acc[r * hd..(r + 1) * hd].iter_mut().for_each(|x| *x *= c);
                        max[r] = m;
                    }
                    sum[r] += ops::exp_sum(sc, max[r]);
                }
                let values = &vs[(h * n + k0) * hd..(h * n + k0 + keys) * hd];
                tile_accumulate(&scores, rows, keys, values, hd, &mut acc);
            }
            for r in 0..rows {
                let inv = 1.0 / sum[r];
                // SAFETY: head h of query q0 + r is this task's alone, inside
                // the n × heads·hd output.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(dst.ptr().add((q0 + r) * width + h * hd), hd)
                };
                for (d, x) in o.iter_mut().zip(&acc[r * hd..(r + 1) * hd]) {
                    *d = x * inv;
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain softmax attention in f64, segment by segment.
    fn reference(qkv: &[f32], n: usize, heads: usize, hd: usize, cu: &[usize]) -> Vec<f32> {
        let width = heads * hd;
        let mut out = vec![0f32; n * width];
        for seg in cu.windows(2) {
            for h in 0..heads {
                for i in seg[0]..seg[1] {
                    let q = &qkv[i * 3 * width + h * hd..][..hd];
                    let scores: Vec<f64> = (seg[0]..seg[1])
                        .map(|j| {
                            let k = &qkv[j * 3 * width + width + h * hd..][..hd];
                            q.iter()
                                .zip(k)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hd {
                        let v: f64 = (seg[0]..seg[1])
                            .zip(&e)
                            .map(|(j, w)| w * qkv[j * 3 * width + 2 * width + h * hd + d] as f64)
                            .sum();
                        out[i * width + h * hd + d] = (v / z) as f32;
                    }
                }
            }
        }
        out
    }

    /// Segments shorter and longer than a key tile, ending inside one, a
    /// single query past a whole block, empty segments, head sizes of the
    /// towers (80, 72) and one the vector kernels do not take (12).
    #[test]
    fn matches_plain_softmax_attention() {
        let cases: &[(usize, usize, &[usize])] = &[
            (2, 80, &[0, 256, 300, 301, 301, 400]),
            (3, 72, &[0, 49, 50, 178]),
            (1, 12, &[0, 7, 130]),
            (2, 16, &[0, 97]),
        ];
        for (c, &(heads, hd, cu)) in cases.iter().enumerate() {
            let n = *cu.last().unwrap();
            let qkv = crate::kernels::matmul::tests::rand_vec(n * 3 * heads * hd, c as u64);
            let mut out = vec![f32::NAN; n * heads * hd];
            segment_attention(&qkv, n, heads, hd, cu, &mut out).unwrap();
            let want = reference(&qkv, n, heads, hd, cu);
            let worst = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 2e-5, "case {c}: max difference {worst}");
        }
    }

    #[test]
    fn mismatched_sizes_and_segments_are_errors() {
        let qkv = vec![0f32; 10 * 3 * 16];
        let mut out = vec![0f32; 10 * 16];
        assert!(segment_attention(&qkv, 10, 1, 16, &[0, 10], &mut out).is_ok());
        assert!(segment_attention(&qkv, 10, 1, 16, &[0, 9], &mut out).is_err());
        assert!(segment_attention(&qkv, 10, 1, 16, &[0, 6, 4, 10], &mut out).is_err());
        assert!(segment_attention(&qkv, 10, 2, 16, &[0, 10], &mut out).is_err());
        assert!(segment_attention(&qkv[1..], 10, 1, 16, &[0, 10], &mut out).is_err());
    }
}
