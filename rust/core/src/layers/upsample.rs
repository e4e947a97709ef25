//! Upsampling by whole factors, like `torch.nn.Upsample(scale_factor=...)`
//! on `(C, H, W)`: `"nearest"` repeats each value over a `sh x sw` block,
//! `"bilinear"` interpolates as torch does with `align_corners=False`. The
//! backward pass sums each output's gradient back into the inputs it came
//! from, in a fixed order.

use super::{numel, Backward, Forward, Layer, LayerConfig, Layout, Layouts};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::par_rows;
use serde::{Deserialize, Serialize};

const NAME: &str = "Upsample2D";

/// How the new values are made (`"nearest"` or `"bilinear"` in a spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpsampleMode {
    /// Each input value repeated over its block.
    Nearest,
    /// Bilinear interpolation, torch's `align_corners=False`.
    Bilinear,
}

impl<'de> Deserialize<'de> for UpsampleMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "nearest" => Ok(UpsampleMode::Nearest),
            serde_json::Value::String(s) if s == "bilinear" => Ok(UpsampleMode::Bilinear),
            other => Err(serde::de::Error::custom(format!(
                "unknown mode {other}; expected \"nearest\" or \"bilinear\""
            ))),
        }
    }
}

/// `Upsample2D`'s configuration: `torch.nn.Upsample`'s whole scale
/// factors per spatial dimension and mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Upsample2DSpec {
    pub scale_factor: [usize; 2],
    pub mode: UpsampleMode,
}

impl LayerConfig for Upsample2DSpec {
    const NAME: &'static str = "Upsample2D";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Upsample::new(self.scale_factor, self.mode)?))
    }
}

/// Upsampling of `(C, H, W)` to `(C, H * sh, W * sw)`.
#[derive(Clone, Debug)]
pub struct Upsample {
    pub scale: [usize; 2],
    pub mode: UpsampleMode,
}

/// Where output row (or column) `o` reads: `w0 * x[i0] + w1 * x[i1]`.
#[derive(Clone, Copy, Debug)]
struct Tap<T> {
    i0: usize,
    i1: usize,
    w0: T,
    w1: T,
}

/// torch's `area_pixel_compute_source_index` with `align_corners=False`
/// and its neighbours for `out = len * scale` outputs.
fn taps<T: Float>(len: usize, scale: usize, mode: UpsampleMode) -> Vec<Tap<T>> {
    (0..len * scale)
        .map(|o| match mode {
            UpsampleMode::Nearest => Tap { i0: o / scale, i1: o / scale, w0: T::ONE, w1: T::ZERO },
            UpsampleMode::Bilinear => {
                let src = ((o as f64 + 0.5) / scale as f64 - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(len - 1);
                let i1 = (i0 + 1).min(len - 1);
                let l1 = src - i0 as f64;
                Tap { i0, i1, w0: T::from_f64(1.0 - l1), w1: T::from_f64(l1) }
            }
        })
        .collect()
}

impl Upsample {
    /// Checks the configuration: every factor at least 1.
    pub fn new(scale: [usize; 2], mode: UpsampleMode) -> Result<Self> {
        if scale.contains(&0) {
            return Err(Error::value(format!(
                "{NAME}: scale_factor must be >= 1, got ({}, {})",
                scale[0], scale[1]
            )));
        }
        Ok(Upsample { scale, mode })
    }

    fn dims(&self, input: &[usize]) -> Result<(usize, usize, usize)> {
        match *input {
            [c, h, w] => Ok((c, h, w)),
            _ => Err(Error::shape(format!(
                "{NAME} expects inputs of shape (N, C, H, W), got per-sample shape {input:?}"
            ))),
        }
    }
}

/// One sample's forward pass over an `h x w` grid of `v`-long vectors
/// (`v = 1` for one channel plane, `v = C` for a channels-last sample):
/// `y[o, p] = sum of the taps' weights times x` (rows, then columns, in
/// torch's order of operations).
fn forward_grid<T: Float>(
    x: &[T],
    y: &mut [T],
    w: usize,
    v: usize,
    rows: &[Tap<T>],
    cols: &[Tap<T>],
    nearest: bool,
) {
    let ow = cols.len();
    for (r, yrow) in rows.iter().zip(y.chunks_exact_mut(ow * v)) {
        let x0 = &x[r.i0 * w * v..(r.i0 + 1) * w * v];
        if nearest {
            for (c, out) in cols.iter().zip(yrow.chunks_exact_mut(v)) {
                out.copy_from_slice(&x0[c.i0 * v..(c.i0 + 1) * v]);
            }
            continue;
        }
        let x1 = &x[r.i1 * w * v..(r.i1 + 1) * w * v];
        for (c, out) in cols.iter().zip(yrow.chunks_exact_mut(v)) {
            let (a, b) = (c.i0 * v, c.i1 * v);
            for (j, o) in out.iter_mut().enumerate() {
                let top = c.w0 * x0[a + j] + c.w1 * x0[b + j];
                let bottom = c.w0 * x1[a + j] + c.w1 * x1[b + j];
                *o = r.w0 * top + r.w1 * bottom;
            }
        }
    }
}

/// The backward pass of [`forward_grid`]: `dx` (overwritten) gets each
/// output gradient times its taps' weights, outputs in order.
fn backward_grid<T: Float>(
    dy: &[T],
    dx: &mut [T],
    w: usize,
    v: usize,
    rows: &[Tap<T>],
    cols: &[Tap<T>],
    nearest: bool,
) {
    dx.fill(T::ZERO);
    let ow = cols.len();
    for (r, grow) in rows.iter().zip(dy.chunks_exact(ow * v)) {
        for (c, g) in cols.iter().zip(grow.chunks_exact(v)) {
            if nearest {
                let d = &mut dx[(r.i0 * w + c.i0) * v..][..v];
                d.iter_mut().zip(g).for_each(|(d, &g)| *d += g);
                continue;
            }
            for (i, wr) in [(r.i0, r.w0), (r.i1, r.w1)] {
                for (j, wc) in [(c.i0, c.w0), (c.i1, c.w1)] {
                    let wt = wr * wc;
                    let d = &mut dx[(i * w + j) * v..][..v];
                    d.iter_mut().zip(g).for_each(|(d, &g)| *d += wt * g);
                }
            }
        }
    }
}

impl<T: Float> Layer<T> for Upsample {
    fn name(&self) -> &'static str {
        NAME
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let (c, h, w) = self.dims(input)?;
        let (Some(oh), Some(ow)) = (h.checked_mul(self.scale[0]), w.checked_mul(self.scale[1])) else {
            return Err(Error::shape(format!("{NAME}: the output of {input:?} would be too large")));
        };
        Ok(vec![c, oh, ow])
    }

    fn layouts(&self) -> Layouts {
        Layouts::Preserve
    }

    fn flops(&self, in_shape: &[usize]) -> usize {
        let per = if self.mode == UpsampleMode::Nearest { 2 } else { 12 };
        per * numel(in_shape) * self.scale[0] * self.scale[1]
    }

    fn forward(&self, f: Forward<'_, T>) {
        let Ok((c, h, w)) = self.dims(f.in_shape) else { return };
        let rows = taps::<T>(h, self.scale[0], self.mode);
        let cols = taps::<T>(w, self.scale[1], self.mode);
        let nearest = self.mode == UpsampleMode::Nearest;
        // Chunks: one channel plane (planar) or one sample (channels-last).
        let (v, k) = if f.in_layout == Layout::ChannelsLast { (c, 1) } else { (1, c) };
        let (in_len, out_len) = (numel(f.in_shape) / k, numel(f.out_shape) / k);
        let x = f.x;
        let y = &mut f.y[..f.n * k * out_len];
        // Each output chunk is written by one task: no shared writes.
        par_rows(y, out_len, out_len, 1, |first, y| {
            for (i, y) in y.chunks_exact_mut(out_len).enumerate() {
                let i = first + i;
                forward_grid(&x[i * in_len..(i + 1) * in_len], y, w, v, &rows, &cols, nearest);
            }
        });
    }

    fn backward(&self, b: Backward<'_, T>) {
        let Some(dx) = b.dx else { return };
        let Ok((c, h, w)) = self.dims(b.in_shape) else { return };
        let rows = taps::<T>(h, self.scale[0], self.mode);
        let cols = taps::<T>(w, self.scale[1], self.mode);
        let nearest = self.mode == UpsampleMode::Nearest;
        let (v, k) = if b.in_layout == Layout::ChannelsLast { (c, 1) } else { (1, c) };
        let (in_len, out_len) = (numel(b.in_shape) / k, numel(b.out_shape) / k);
        let dy = &*b.dy;
        par_rows(&mut dx[..b.n * k * in_len], in_len, out_len, 1, |first, dx| {
            for (i, dx) in dx.chunks_exact_mut(in_len).enumerate() {
                let i = first + i;
                backward_grid(&dy[i * out_len..(i + 1) * out_len], dx, w, v, &rows, &cols, nearest);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Backward, Buffers, Forward, Layout};

    fn run(up: &Upsample, input: &[usize], n: usize, layout: Layout, x: &[f64], dy: &[f64]) -> [Vec<f64>; 2] {
        let layer: &dyn Layer<f64> = up;
        let out = layer.output_shape(input).unwrap();
        let mut y = vec![f64::NAN; n * numel(&out)];
        layer.forward(Forward {
            params: &[],
            buffers: Buffers::Frozen { values: &[], counts: &[] },
            x,
            y: &mut y,
            scratch: &mut [],
            n,
            in_shape: input,
            out_shape: &out,
            in_layout: layout,
            out_layout: layout,
            training: true,
            key: 0,
        });
        let mut dx = vec![f64::NAN; x.len()];
        let mut dys = dy.to_vec();
        layer.backward(Backward {
            params: &[],
            grads: &mut [],
            accumulate: false,
            buffers: &[],
            x,
            y: &y,
            dy: &mut dys,
            dx: Some(&mut dx),
            scratch: &mut [],
            n,
            in_shape: input,
            out_shape: &out,
            in_layout: layout,
            out_layout: layout,
            key: 0,
        });
        [y, dx]
    }

    fn to_cl(v: &[f64], c: usize, s: usize) -> Vec<f64> {
        let mut out = vec![0.0; v.len()];
        for (src, dst) in v.chunks_exact(c * s).zip(out.chunks_exact_mut(c * s)) {
            for ci in 0..c {
                for p in 0..s {
                    dst[p * c + ci] = src[ci * s + p];
                }
            }
        }
        out
    }

    #[test]
    fn nearest_repeats_and_sums() {
        let up = Upsample::new([2, 3], UpsampleMode::Nearest).unwrap();
        let x: Vec<f64> = (0..2 * 2 * 2).map(|i| i as f64).collect();
        let dy: Vec<f64> = (0..2 * 4 * 6).map(|i| (i % 7) as f64).collect();
        let [y, dx] = run(&up, &[2, 2, 2], 1, Layout::Planar, &x, &dy);
        assert_eq!(&y[..6], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(&y[6..12], &y[..6]);
        assert_eq!(&y[12..18], &[2.0, 2.0, 2.0, 3.0, 3.0, 3.0]);
        // dx[0, 0, 0]: the 2x3 block of rows 0-1, columns 0-2 of channel 0.
        let want: f64 = [0, 1, 2, 6, 7, 8].iter().map(|&i| dy[i]).sum();
        assert_eq!(dx[0], want);
        assert_eq!(dx.iter().sum::<f64>(), dy.iter().sum::<f64>());
        // Channels-last gives the same values, reordered.
        let [y_cl, dx_cl] =
            run(&up, &[2, 2, 2], 1, Layout::ChannelsLast, &to_cl(&x, 2, 4), &to_cl(&dy, 2, 24));
        assert_eq!(y_cl, to_cl(&y, 2, 24));
        assert_eq!(dx_cl, to_cl(&dx, 2, 4));
    }

    #[test]
    fn bilinear_interpolates_as_torch() {
        // torch.nn.Upsample(scale_factor=2, mode="bilinear")(torch.tensor([[[[1., 2.], [3., 4.]]]]))
        let up = Upsample::new([2, 2], UpsampleMode::Bilinear).unwrap();
        let x = [1.0, 2.0, 3.0, 4.0];
        let dy = vec![1.0; 16];
        let [y, dx] = run(&up, &[1, 2, 2], 1, Layout::Planar, &x, &dy);
        let want = [1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0];
        assert_eq!(y, want);
        // Every output's weights sum to 1: the gradient of the sum is 16 / 4 each.
        assert_eq!(dx, [4.0; 4]);
        // The backward pass is the forward pass's transpose: <y(x), dy> = <x, dx(dy)>.
        let dy: Vec<f64> = (0..2 * 3 * 5 * 4 * 15).map(|i| ((i * 7) % 11) as f64 - 5.0).collect();
        let x: Vec<f64> = (0..2 * 3 * 5 * 5).map(|i| ((i * 5) % 13) as f64 - 6.0).collect();
        let up = Upsample::new([4, 3], UpsampleMode::Bilinear).unwrap();
        for layout in [Layout::Planar, Layout::ChannelsLast] {
            let [y, dx] = run(&up, &[3, 5, 5], 2, layout, &x, &dy);
            let a: f64 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
            let b: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert!((a - b).abs() < 1e-9 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn shapes_and_errors() {
        let up = Upsample::new([2, 3], UpsampleMode::Nearest).unwrap();
        assert_eq!(Layer::<f32>::output_shape(&up, &[4, 5, 6]).unwrap(), [4, 10, 18]);
        let msg = Layer::<f32>::output_shape(&up, &[4, 5]).unwrap_err().message;
        assert_eq!(msg, "Upsample2D expects inputs of shape (N, C, H, W), got per-sample shape [4, 5]");
        let msg = Upsample::new([0, 2], UpsampleMode::Nearest).unwrap_err().message;
        assert_eq!(msg, "Upsample2D: scale_factor must be >= 1, got (0, 2)");
    }
}
