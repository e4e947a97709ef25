//! Kernels: plain functions over slices and dimensions that write into
//! caller-owned buffers and allocate nothing.
//!
//! Parallel kernels split their *output* into disjoint chunks; every output
//! element is computed by the same sequence of operations whatever the chunk
//! boundaries, so results do not depend on the thread count.

pub mod activation;
pub mod conv;
pub mod gemm;
pub mod norms;
pub mod pool2x2;
pub mod reduce;
pub mod simd;
pub mod team;
pub mod transpose;

use rayon::prelude::*;

/// Below this many scalar operations a kernel runs on the calling thread:
/// a rayon fork-join costs a few microseconds.
pub const PAR_MIN_WORK: usize = 1 << 16;

/// Below this many floating-point operations a matrix product runs on one
/// thread. A fork-join costs a few microseconds, and on small products the
/// second thread mostly duplicates the packing of the shared operand: at
/// batch 32 a 784x128 layer (6.4 MFLOP) measured no faster on 2 threads.
pub const GEMM_PAR_MIN_FLOPS: usize = 1 << 23;

/// Inside a spinning [`team`], handing out work costs about this many times
/// less than a rayon fork-join that may have to wake a sleeping thread, so
/// the least work worth splitting is divided by it.
pub const TEAM_WORK_DIVISOR: usize = 8;

/// Workers the calling thread can split kernels over, and the least work
/// worth splitting given its rayon-pool value `min_work`: the calling
/// thread's [`team`] when it has one, else the current rayon pool.
#[inline]
pub fn workers_for(min_work: usize) -> (usize, usize) {
    if team::in_job() {
        return (1, min_work);
    }
    match team::current_size() {
        Some(size) => (size, min_work / TEAM_WORK_DIVISOR),
        None => (rayon::current_num_threads(), min_work),
    }
}

/// Number of chunks to split `rows` rows costing `work_per_row` each into,
/// given the least total work worth splitting (`min_work`, on a rayon pool).
#[inline]
pub fn chunk_count_for(rows: usize, work_per_row: usize, min_rows: usize, min_work: usize) -> usize {
    let (threads, min_work) = workers_for(min_work);
    let work = rows.saturating_mul(work_per_row);
    if threads <= 1 || work < min_work {
        return 1;
    }
    threads.min(rows / min_rows.max(1)).min(work / (min_work / 2).max(1)).max(1)
}

/// [`chunk_count_for`] with the elementwise threshold [`PAR_MIN_WORK`].
#[inline]
pub fn chunk_count(rows: usize, work_per_row: usize, min_rows: usize) -> usize {
    chunk_count_for(rows, work_per_row, min_rows, PAR_MIN_WORK)
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
    for_row_chunks(out, row_len, rows.div_ceil(chunks), f);
}

/// Runs `f(first_row, rows_chunk)` over chunks of `rows_per` rows of `out`
/// (row length `row_len`): one call on this thread when a chunk holds every
/// row, otherwise the chunks in parallel.
pub fn for_row_chunks<T: Send>(
    out: &mut [T],
    row_len: usize,
    rows_per: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if rows_per.saturating_mul(row_len) >= out.len() {
        f(0, out);
    } else {
        par_chunks(out, rows_per.max(1) * row_len, |i, c| f(i * rows_per, c));
    }
}

/// `f(i, chunk_i)` over the `chunk`-sized pieces of `out`, in parallel on
/// the calling thread's [`team`] or else on the rayon pool.
pub fn par_chunks<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if team::in_job() {
        return out.chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| f(i, c));
    }
    team::with_current(move |t| match t {
        Some(t) => team::team_chunks(t, out, chunk, f),
        None => out.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| f(i, c)),
    })
}

/// `f(i, a_i, b_i)` over the `ca`-sized chunks of `a` paired with the
/// `cb`-sized chunks of `b` (as many as `a` has; `b` must have at least as
/// many), in parallel on the calling thread's [`team`] or else the rayon
/// pool, or serially when there is one worker (or inside a team job).
pub fn par_chunks2<A: Send, B: Send>(
    a: &mut [A],
    ca: usize,
    b: &mut [B],
    cb: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
) {
    let (ca, cb) = (ca.max(1), cb.max(1));
    let count = a.len().div_ceil(ca);
    // Checked: a wrapped product could pass with a short `b` and then hand
    // out overlapping chunks of it below.
    let need = count.saturating_sub(1).checked_mul(cb);
    assert!(need.is_some_and(|n| b.len() >= n), "par_chunks2: b has fewer chunks than a");
    let (workers, _) = workers_for(0);
    if workers <= 1 || count <= 1 {
        return a.chunks_mut(ca).zip(b.chunks_mut(cb)).enumerate().for_each(|(i, (x, y))| f(i, x, y));
    }
    team::with_current(|t| match t {
        Some(t) => {
            let (pa, pb) = (team::SlicePtr::new(a), team::SlicePtr::new(b));
            t.for_each_index(count, |i| {
                // SAFETY: each index `i < count` runs once, and chunk `i` is
                // `i * ca .. (i + 1) * ca` of `a` and `i * cb .. (i + 1) * cb`
                // of `b` (clamped to the ends), so the chunks handed out are
                // disjoint: the starts cannot overflow (`i * ca < a.len()`,
                // `i * cb <= (count - 1) * cb <= b.len()`, checked above) and
                // the ends saturate at `usize::MAX`, past any slice. Both
                // slices stay mutably borrowed by this call until
                // `for_each_index` returns.
                let (x, y) = unsafe {
                    (
                        pa.chunk(i * ca, (i + 1).saturating_mul(ca)),
                        pb.chunk(i * cb, (i + 1).saturating_mul(cb)),
                    )
                };
                f(i, x, y)
            })
        }
        None => a.par_chunks_mut(ca).zip(b.par_chunks_mut(cb)).enumerate().for_each(|(i, (x, y))| f(i, x, y)),
    })
}

/// Elementwise helper: `f(offset, chunk)` over chunks of `out`.
pub fn par_elems<T: Send>(out: &mut [T], cost: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let len = out.len();
    let (threads, min_work) = workers_for(PAR_MIN_WORK);
    if threads <= 1 || len.saturating_mul(cost) < min_work {
        f(0, out);
        return;
    }
    let per = len.div_ceil(threads * 4).max(min_work / 16);
    par_chunks(out, per, |i, c| f(i * per, c));
}
