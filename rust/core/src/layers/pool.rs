//! Pooling on `(C, H, W)` (and `(C, L)`, run as height 1), like torch's
//! `MaxPool2d`, `AvgPool2d` (`count_include_pad=True`), `MaxPool1d`,
//! `AvgPool1d`, and a global average over `(H, W)`. Every plane is pooled
//! on its own, so work splits by plane.

use super::{numel, Backward, Forward, Layer};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::par_chunks;

/// Which reduction a pooling window takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

/// A max or average pooling layer.
#[derive(Clone, Debug)]
pub struct Pool {
    name: &'static str,
    kind: PoolKind,
    dims: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

/// The sizes of one pooled plane.
#[derive(Clone, Copy, Debug)]
struct Plane {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

fn pair(v: [usize; 2], dims: usize) -> String {
    if dims == 1 {
        v[1].to_string()
    } else {
        format!("({}, {})", v[0], v[1])
    }
}

impl Pool {
    /// Checks the configuration (for `dims == 1`, the first entries are the
    /// unit height).
    pub fn new(
        name: &'static str,
        kind: PoolKind,
        dims: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Result<Self> {
        for (what, v) in [("kernel_size", kernel), ("stride", stride)] {
            if v.contains(&0) {
                return Err(Error::value(format!("{name}: {what} must be >= 1, got {}", pair(v, dims))));
            }
        }
        if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
            return Err(Error::value(format!(
                "{name}: padding must be at most half the kernel size (as in torch), got padding {} \
                 for kernel_size {}",
                pair(padding, dims),
                pair(kernel, dims)
            )));
        }
        Ok(Pool { name, kind, dims, kernel, stride, padding })
    }

    fn plane(&self, input: &[usize]) -> Result<(usize, Plane)> {
        let (c, h, w) = match (self.dims, input) {
            (1, &[c, l]) => (c, 1, l),
            (2, &[c, h, w]) => (c, h, w),
            _ => {
                let want = if self.dims == 1 { "(N, C, L)" } else { "(N, C, H, W)" };
                return Err(Error::shape(format!(
                    "{} expects inputs of shape {want}, got per-sample shape {input:?}",
                    self.name
                )));
            }
        };
        let [kh, kw] = self.kernel;
        let [ph, pw] = self.padding;
        if h + 2 * ph < kh || w + 2 * pw < kw {
            return Err(Error::shape(format!(
                "{}: kernel_size {} is larger than the padded input (per-sample shape {input:?})",
                self.name,
                pair(self.kernel, self.dims)
            )));
        }
        let oh = (h + 2 * ph - kh) / self.stride[0] + 1;
        let ow = (w + 2 * pw - kw) / self.stride[1] + 1;
        Ok((c, Plane { h, w, oh, ow }))
    }

    /// The window of output `(oh, ow)`: rows and columns inside the input.
    #[inline]
    fn window(&self, p: &Plane, oh: usize, ow: usize) -> (usize, usize, usize, usize) {
        let h0 = (oh * self.stride[0]) as isize - self.padding[0] as isize;
        let w0 = (ow * self.stride[1]) as isize - self.padding[1] as isize;
        let h1 = (h0 + self.kernel[0] as isize).min(p.h as isize) as usize;
        let w1 = (w0 + self.kernel[1] as isize).min(p.w as isize) as usize;
        (h0.max(0) as usize, h1, w0.max(0) as usize, w1)
    }

    /// The plain 2x2, stride 2, unpadded case (the usual one), vectorized.
    fn is_2x2(&self) -> bool {
        self.kernel == [2, 2] && self.stride == [2, 2] && self.padding == [0, 0]
    }

    fn forward_plane<T: Float>(&self, p: &Plane, x: &[T], y: &mut [T]) {
        if self.is_2x2() {
            return pool2x2(self.kind, p, x, y);
        }
        let area = T::from_usize(self.kernel[0] * self.kernel[1]);
        for oh in 0..p.oh {
            for ow in 0..p.ow {
                let (h0, h1, w0, w1) = self.window(p, oh, ow);
                let rows = (h0..h1).map(|h| &x[h * p.w + w0..h * p.w + w1]);
                y[oh * p.ow + ow] = match self.kind {
                    PoolKind::Max => {
                        let mut m = x[h0 * p.w + w0];
                        for row in rows {
                            for &v in row {
                                if v > m {
                                    m = v;
                                }
                            }
                        }
                        m
                    }
                    PoolKind::Avg => {
                        let mut s = T::ZERO;
                        for row in rows {
                            for &v in row {
                                s += v;
                            }
                        }
                        s / area
                    }
                };
            }
        }
    }

    fn backward_plane<T: Float>(&self, p: &Plane, x: &[T], dy: &[T], dx: &mut [T]) {
        if self.is_2x2() {
            return unpool2x2(self.kind, p, x, dy, dx);
        }
        dx.fill(T::ZERO);
        let area = T::from_usize(self.kernel[0] * self.kernel[1]);
        for oh in 0..p.oh {
            for ow in 0..p.ow {
                let (h0, h1, w0, w1) = self.window(p, oh, ow);
                let g = dy[oh * p.ow + ow];
                match self.kind {
                    PoolKind::Max => {
                        // The first maximum in scan order, as torch picks it.
                        let mut at = h0 * p.w + w0;
                        for h in h0..h1 {
                            for i in h * p.w + w0..h * p.w + w1 {
                                if x[i] > x[at] {
                                    at = i;
                                }
                            }
                        }
                        dx[at] += g;
                    }
                    PoolKind::Avg => {
                        let share = g / area;
                        for h in h0..h1 {
                            for v in &mut dx[h * p.w + w0..h * p.w + w1] {
                                *v += share;
                            }
                        }
                    }
                }
            }
        }
    }
}

crate::multiversion! {
    /// 2x2 windows, stride 2: each output from two input rows.
    fn pool2x2_rows<T: Float>(max: bool, r0: &[T], r1: &[T], out: &mut [T]) {
        let quarter = T::from_f64(0.25);
        for ((o, a), b) in out.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            *o = if max {
                let m0 = if a[1] > a[0] { a[1] } else { a[0] };
                let m1 = if b[1] > b[0] { b[1] } else { b[0] };
                if m1 > m0 { m1 } else { m0 }
            } else {
                (a[0] + a[1] + b[0] + b[1]) * quarter
            };
        }
    }
}

fn pool2x2<T: Float>(kind: PoolKind, p: &Plane, x: &[T], y: &mut [T]) {
    for oh in 0..p.oh {
        let r0 = &x[2 * oh * p.w..][..2 * p.ow];
        let r1 = &x[(2 * oh + 1) * p.w..][..2 * p.ow];
        pool2x2_rows(kind == PoolKind::Max, r0, r1, &mut y[oh * p.ow..(oh + 1) * p.ow]);
    }
}

fn unpool2x2<T: Float>(kind: PoolKind, p: &Plane, x: &[T], dy: &[T], dx: &mut [T]) {
    // Rows and columns past the last window get no gradient.
    if p.h > 2 * p.oh || p.w > 2 * p.ow {
        dx.fill(T::ZERO);
    }
    let quarter = T::from_f64(0.25);
    for oh in 0..p.oh {
        let (top, bottom) = dx[2 * oh * p.w..(2 * oh + 2) * p.w].split_at_mut(p.w);
        let (x0, x1) = (&x[2 * oh * p.w..], &x[(2 * oh + 1) * p.w..]);
        for ow in 0..p.ow {
            let g = dy[oh * p.ow + ow];
            let j = 2 * ow;
            match kind {
                PoolKind::Max => {
                    // The first maximum in scan order (torch's choice).
                    let v = [x0[j], x0[j + 1], x1[j], x1[j + 1]];
                    let mut at = 0;
                    for k in 1..4 {
                        if v[k] > v[at] {
                            at = k;
                        }
                    }
                    let mut d = [T::ZERO; 4];
                    d[at] = g;
                    top[j] = d[0];
                    top[j + 1] = d[1];
                    bottom[j] = d[2];
                    bottom[j + 1] = d[3];
                }
                PoolKind::Avg => {
                    let s = g * quarter;
                    top[j] = s;
                    top[j + 1] = s;
                    bottom[j] = s;
                    bottom[j + 1] = s;
                }
            }
        }
    }
}

impl<T: Float> Layer<T> for Pool {
    fn name(&self) -> &'static str {
        self.name
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let (c, p) = self.plane(input)?;
        Ok(if self.dims == 1 { vec![c, p.ow] } else { vec![c, p.oh, p.ow] })
    }

    fn flops(&self, in_shape: &[usize]) -> usize {
        2 * numel(in_shape)
    }

    fn forward(&self, f: Forward<'_, T>) {
        let Ok((c, p)) = self.plane(f.in_shape) else { return };
        let planes = f.n * c;
        let x = f.x;
        let (ilen, olen) = (p.h * p.w, p.oh * p.ow);
        par_chunks(&mut f.y[..planes * olen], olen, |i, y| {
            self.forward_plane(&p, &x[i * ilen..(i + 1) * ilen], y);
        });
    }

    fn backward(&self, b: Backward<'_, T>) {
        let Some(dx) = b.dx else { return };
        let Ok((c, p)) = self.plane(b.in_shape) else { return };
        let planes = b.n * c;
        let (x, dy) = (b.x, &*b.dy);
        let (ilen, olen) = (p.h * p.w, p.oh * p.ow);
        par_chunks(&mut dx[..planes * ilen], ilen, |i, dx| {
            self.backward_plane(&p, &x[i * ilen..(i + 1) * ilen], &dy[i * olen..(i + 1) * olen], dx);
        });
    }
}

/// The mean of each channel's plane: `(C, H, W) -> (C)`.
#[derive(Clone, Debug)]
pub struct GlobalAvgPool;

impl<T: Float> Layer<T> for GlobalAvgPool {
    fn name(&self) -> &'static str {
        "GlobalAvgPool2D"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match *input {
            [c, h, w] if h * w > 0 => Ok(vec![c]),
            _ => Err(Error::shape(format!(
                "GlobalAvgPool2D expects inputs of shape (N, C, H, W), got per-sample shape {input:?}"
            ))),
        }
    }

    fn forward(&self, f: Forward<'_, T>) {
        let hw = numel(&f.in_shape[1..]);
        let x = f.x;
        let inv = T::ONE / T::from_usize(hw);
        let planes = f.n * f.in_shape[0];
        par_chunks(&mut f.y[..planes], 256, |i, y| {
            for (j, o) in y.iter_mut().enumerate() {
                let p = (i * 256 + j) * hw;
                let mut s = T::ZERO;
                for &v in &x[p..p + hw] {
                    s += v;
                }
                *o = s * inv;
            }
        });
    }

    fn backward(&self, b: Backward<'_, T>) {
        let Some(dx) = b.dx else { return };
        let hw = numel(&b.in_shape[1..]);
        let planes = b.n * b.in_shape[0];
        let inv = T::ONE / T::from_usize(hw);
        let dy = &*b.dy;
        par_chunks(&mut dx[..planes * hw], hw, |i, d| d.fill(dy[i] * inv));
    }
}
