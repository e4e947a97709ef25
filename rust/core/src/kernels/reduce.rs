//! Reductions with a fixed order: column sums are split across threads by
//! columns, and each column is summed over rows in row order.

use super::activation::Act;
use super::{par_elems, workers_for, PAR_MIN_WORK};
use crate::float::Float;

/// `out[c] (+)= sum_r m[r, c]` for a row-major `rows x cols` matrix.
pub fn col_sums<T: Float>(m: &[T], rows: usize, cols: usize, out: &mut [T], accumulate: bool) {
    debug_assert!(m.len() >= rows * cols && out.len() == cols);
    if !accumulate {
        out.fill(T::ZERO);
    }
    // Chunks of columns: every column is reduced over rows in order.
    par_elems(out, rows.max(1), |c0, acc| {
        let c1 = c0 + acc.len();
        for r in 0..rows {
            let row = &m[r * cols + c0..r * cols + c1];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    });
}

/// Turns the output gradient `dy` of a fused dense+activation into the
/// pre-activation gradient (`dy *= act'(y)`, in place) and reduces it into
/// the bias gradient `gb (+)= colsum(dy)`. One pass when small, otherwise two
/// parallel passes (rows, then columns).
pub fn act_backward_bias<T: Float>(
    act: Act,
    y: &[T],
    dy: &mut [T],
    rows: usize,
    cols: usize,
    gb: Option<&mut [T]>,
    accumulate: bool,
) {
    let n = rows * cols;
    let (threads, min_work) = workers_for(PAR_MIN_WORK);
    if n < min_work || threads <= 1 {
        match gb {
            Some(gb) => {
                if !accumulate {
                    gb.fill(T::ZERO);
                }
                for r in 0..rows {
                    let yr = &y[r * cols..(r + 1) * cols];
                    let dr = &mut dy[r * cols..(r + 1) * cols];
                    for ((g, &yi), b) in dr.iter_mut().zip(yr).zip(gb.iter_mut()) {
                        *g *= act.derivative_at_output(yi);
                        *b += *g;
                    }
                }
            }
            None => super::activation::backward_at_output_inplace(act, &y[..n], &mut dy[..n]),
        }
        return;
    }
    super::activation::backward_at_output_inplace(act, &y[..n], &mut dy[..n]);
    if let Some(gb) = gb {
        col_sums(dy, rows, cols, gb, accumulate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn col_sums_small_and_large() {
        for &(rows, cols) in &[(3usize, 4usize), (300, 513)] {
            let m: Vec<f64> = (0..rows * cols).map(|i| (i % 7) as f64 - 3.0).collect();
            let mut out = vec![1.0; cols];
            col_sums(&m, rows, cols, &mut out, true);
            for c in 0..cols {
                let want: f64 = 1.0 + (0..rows).map(|r| m[r * cols + c]).sum::<f64>();
                assert_eq!(out[c], want);
            }
        }
    }

    #[test]
    fn fused_matches_separate() {
        for &(rows, cols) in &[(4usize, 5usize), (256, 400)] {
            let y: Vec<f64> = (0..rows * cols).map(|i| ((i * 37) % 11) as f64 / 5.0 - 1.0).collect();
            let dy0: Vec<f64> = (0..rows * cols).map(|i| ((i * 13) % 7) as f64 - 3.0).collect();
            let mut dy = dy0.clone();
            let mut gb = vec![0.0; cols];
            act_backward_bias(Act::Relu, &y, &mut dy, rows, cols, Some(&mut gb), false);
            for (c, &g) in gb.iter().enumerate() {
                let mut s = 0.0;
                for r in 0..rows {
                    let i = r * cols + c;
                    let want = if y[i] > 0.0 { dy0[i] } else { 0.0 };
                    assert_eq!(dy[i], want);
                    s += want;
                }
                assert_eq!(g, s);
            }
        }
    }
}
