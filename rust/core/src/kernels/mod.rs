//! Kernels: plain functions over slices and dimensions that write into
//! caller-owned buffers and allocate nothing.
//!
//! Parallel kernels split their *output* into disjoint chunks; every output
//! element is computed by the same sequence of operations whatever the chunk
//! boundaries, so results do not depend on the thread count.

pub mod activation;
pub mod gemm;
pub mod reduce;
pub mod simd;

use rayon::prelude::*;

/// Below this many scalar operations a kernel runs on the calling thread:
/// a rayon fork-join costs a few microseconds.
pub const PAR_MIN_WORK: usize = 1 << 16;

/// Number of chunks to split `rows` rows costing `work_per_row` each into.
#[inline]
pub fn chunk_count(rows: usize, work_per_row: usize, min_rows: usize) -> usize {
    let threads = rayon::current_num_threads();
    if threads <= 1 || rows.saturating_mul(work_per_row) < PAR_MIN_WORK {
        return 1;
    }
    let by_work = rows.saturating_mul(work_per_row) / (PAR_MIN_WORK / 2);
    threads.min(rows / min_rows.max(1)).min(by_work).max(1)
}

/// Runs `f(first_row, rows_chunk)` over row chunks of `out` (row length
/// `row_len`), in parallel when the work is large enough.
pub fn par_rows<T: Send>(
    out: &mut [T],
    row_len: usize,
    work_per_row: usize,
    min_rows: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    let chunks = chunk_count(rows, work_per_row, min_rows);
    if chunks <= 1 {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(chunks);
    out.par_chunks_mut(per * row_len).enumerate().for_each(|(i, c)| f(i * per, c));
}

/// Elementwise helper: `f(offset, chunk)` over chunks of `out`.
pub fn par_elems<T: Send>(out: &mut [T], cost: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let len = out.len();
    let threads = rayon::current_num_threads();
    if threads <= 1 || len.saturating_mul(cost) < PAR_MIN_WORK {
        f(0, out);
        return;
    }
    let per = len.div_ceil(threads * 4).max(4096);
    out.par_chunks_mut(per).enumerate().for_each(|(i, c)| f(i * per, c));
}
