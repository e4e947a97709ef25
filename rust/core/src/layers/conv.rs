//! Convolutions, like `torch.nn.Conv2d` on `(C, H, W)` and `Conv1d` on
//! `(C, L)` (a 1-D convolution is run as a 2-D one of height 1). Weight
//! `(out, in, kh, kw)` (`(out, in, k)`), bias `(out)`.
//!
//! The kernels (`kernels::conv`) read channels-last copies that this layer
//! keeps in its scratch: the padded input (made in the forward pass, used
//! again for the weight gradient), the packed weight, and the output
//! gradient. A following ReLU, LeakyReLU, Sigmoid or Tanh is fused into the
//! forward pass's output and differentiated while the gradient is copied.

use super::{numel, Backward, Forward, Init, Layer, LayerConfig, Layouts, Padding, ParamDecl};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::activation::Act;
use crate::kernels::conv::{self as k, ConvGeom, Tiles};
use crate::kernels::{par_chunks, par_chunks2, par_elems};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// `Conv2D`'s configuration: `torch.nn.Conv2d` on `(C, H, W)`'s arguments
/// (plus `init`); weight `(out, in, kh, kw)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2DSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: [usize; 2],
    pub stride: [usize; 2],
    pub padding: Padding<[usize; 2]>,
    pub dilation: [usize; 2],
    pub bias: bool,
    pub init: Init,
}

impl LayerConfig for Conv2DSpec {
    const NAME: &'static str = "Conv2D";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Conv::new(
            Self::NAME,
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding.clone(),
            self.dilation,
            self.bias,
            self.init,
        )?))
    }
}

/// `Conv1D`'s configuration: `torch.nn.Conv1d` on `(C, L)`'s arguments
/// (plus `init`); weight `(out, in, k)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv1DSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: usize,
    pub stride: usize,
    pub padding: Padding<usize>,
    pub dilation: usize,
    pub bias: bool,
    pub init: Init,
}

impl LayerConfig for Conv1DSpec {
    const NAME: &'static str = "Conv1D";

    /// A 2-D convolution of height 1.
    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        let padding = match self.padding {
            Padding::Same => Padding::Same,
            Padding::Valid => Padding::Valid,
            Padding::Explicit(p) => Padding::Explicit([0, p]),
        };
        Ok(Box::new(Conv::new(
            Self::NAME,
            self.in_channels,
            self.out_channels,
            [1, self.kernel_size],
            [1, self.stride],
            padding,
            [1, self.dilation],
            self.bias,
            self.init,
        )?))
    }
}

/// A 2-D convolution (1-D when `dims == 1`).
#[derive(Clone, Debug)]
pub struct Conv {
    name: &'static str,
    dims: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: Padding<[usize; 2]>,
    pub dilation: [usize; 2],
    pub bias: bool,
    pub init: Init,
    /// Activation fused into the output (`Identity` when none).
    pub act: Act,
}

/// Most partial weight gradients summed in order (fixed chunks of samples).
const MAX_PARTIALS: usize = 16;
/// Most elements all partial weight gradients of one layer may take.
const MAX_PARTIAL_ELEMS: usize = 1 << 24;

fn pair(v: [usize; 2], dims: usize) -> String {
    if dims == 1 {
        v[1].to_string()
    } else {
        format!("({}, {})", v[0], v[1])
    }
}

impl Conv {
    /// Checks the configuration. For `dims == 1` the first entry of every
    /// pair is the (unit) height.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &'static str,
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: Padding<[usize; 2]>,
        dilation: [usize; 2],
        bias: bool,
        init: Init,
    ) -> Result<Self> {
        let dims = if name == "Conv1D" { 1 } else { 2 };
        for (what, v) in [("in_channels", in_channels), ("out_channels", out_channels)] {
            if v == 0 {
                return Err(Error::value(format!("{name}: {what} must be >= 1, got 0")));
            }
        }
        for (what, v) in [("kernel_size", kernel), ("stride", stride), ("dilation", dilation)] {
            if v.contains(&0) {
                return Err(Error::value(format!("{name}: {what} must be >= 1, got {}", pair(v, dims))));
            }
        }
        if padding == Padding::Same && stride != [1, 1] {
            return Err(Error::value(format!(
                "{name}: padding=\"same\" needs stride 1 (as in torch), got stride {}",
                pair(stride, dims)
            )));
        }
        Ok(Conv {
            name,
            dims,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            dilation,
            bias,
            init,
            act: Act::Identity,
        })
    }

    fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]
    }

    /// Padding (top, left, bottom, right).
    fn pads(&self) -> [usize; 4] {
        match self.padding {
            Padding::Valid => [0; 4],
            Padding::Explicit([ph, pw]) => [ph, pw, ph, pw],
            Padding::Same => {
                // torch: the total is split with the extra on the far side.
                let th = self.dilation[0] * (self.kernel[0] - 1);
                let tw = self.dilation[1] * (self.kernel[1] - 1);
                [th / 2, tw / 2, th - th / 2, tw - tw / 2]
            }
        }
    }

    fn expected(&self) -> String {
        let dims = if self.dims == 1 { "(N, C, L)" } else { "(N, C, H, W)" };
        format!("{} expects inputs of shape {dims} with C = {}", self.name, self.in_channels)
    }

    /// The geometry for a per-sample input shape, or why it does not fit.
    pub fn geom(&self, input: &[usize]) -> Result<ConvGeom> {
        let (c, h, w) = match (self.dims, input) {
            (1, &[c, l]) => (c, 1, l),
            (2, &[c, h, w]) => (c, h, w),
            _ => return Err(Error::shape(format!("{}, got per-sample shape {input:?}", self.expected()))),
        };
        if c != self.in_channels {
            return Err(Error::shape(format!(
                "{}, got {c} channels (per-sample shape {input:?})",
                self.expected()
            )));
        }
        let [pt, pl, pb, pr] = self.pads();
        let ext = |k: usize, d: usize| d * (k - 1) + 1;
        let (eh, ew) = (ext(self.kernel[0], self.dilation[0]), ext(self.kernel[1], self.dilation[1]));
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        if eh > hp || ew > wp {
            let (kernel, padded) = if self.dims == 1 {
                (ew.to_string(), wp.to_string())
            } else {
                (format!("{eh}x{ew}"), format!("{hp}x{wp}"))
            };
            return Err(Error::shape(format!(
                "{}: the kernel spans {kernel} (after dilation) but the padded input is only {padded} \
                 (per-sample shape {input:?})",
                self.name
            )));
        }
        Ok(ConvGeom {
            cin: c,
            cout: self.out_channels,
            h,
            w,
            kh: self.kernel[0],
            kw: self.kernel[1],
            sh: self.stride[0],
            sw: self.stride[1],
            dh: self.dilation[0],
            dw: self.dilation[1],
            pt,
            pl,
            pb,
            pr,
            oh: (hp - eh) / self.stride[0] + 1,
            ow: (wp - ew) / self.stride[1] + 1,
        })
    }

    /// Samples per partial weight gradient and the number of partials for
    /// a batch of `n` (fixed by the shape, never by the thread count).
    fn partials(g: &ConvGeom, lanes: usize, n: usize) -> (usize, usize) {
        let plen = g.dw_len(lanes) + g.cout.div_ceil(lanes) * lanes;
        let most = (MAX_PARTIAL_ELEMS / plen.max(1)).clamp(1, MAX_PARTIALS);
        let per = n.div_ceil(most).max(1);
        (per, n.div_ceil(per).max(1))
    }
}

/// The layer's scratch, in order: the forward panel and the padded inputs
/// (kept for the backward pass), which evaluation needs too; then, for
/// training only, the input-gradient panel, the output gradients, and the
/// partial weight and bias gradients.
struct Parts<'a, T> {
    xp: &'a mut [T],
    panel: &'a mut [T],
    panel_t: &'a mut [T],
    dz: &'a mut [T],
    partials: &'a mut [T],
}

fn lens(g: &ConvGeom, lanes: usize, n: usize) -> [usize; 5] {
    let (_, count) = Conv::partials(g, lanes, n);
    let plen = g.dw_len(lanes) + g.cout.div_ceil(lanes) * lanes;
    [
        g.panel_len(lanes),
        n * g.xp_len(),
        g.panel_t_len(lanes),
        n * g.grad_layout(lanes, true).len(),
        count * plen,
    ]
}

/// The parts of a scratch sized for training (the training parts empty if
/// it was sized for evaluation).
fn split<'a, T>(s: &'a mut [T], g: &ConvGeom, lanes: usize, n: usize) -> Parts<'a, T> {
    let [a, b, c, d, e] = lens(g, lanes, n);
    let (panel, s) = s.split_at_mut(a);
    let (xp, s) = s.split_at_mut(b);
    let rest = s.len().min(c + d + e);
    let (panel_t, s) = s[..rest].split_at_mut(c.min(rest));
    let (dz, s) = s.split_at_mut(d.min(s.len()));
    let e = e.min(s.len());
    Parts { xp, panel, panel_t, dz, partials: &mut s[..e] }
}

impl<T: Float> Layer<T> for Conv {
    fn name(&self) -> &'static str {
        self.name
    }

    fn params(&self) -> Vec<ParamDecl> {
        let mut shape = vec![self.out_channels, self.in_channels];
        if self.dims == 1 {
            shape.push(self.kernel[1]);
        } else {
            shape.extend_from_slice(&self.kernel);
        }
        let mut v = vec![ParamDecl { name: "weight", shape }];
        if self.bias {
            v.push(ParamDecl { name: "bias", shape: vec![self.out_channels] });
        }
        v
    }

    fn init_params(&self, params: &mut [T], rng: &mut Rng) {
        let (w, b) = params.split_at_mut(self.weight_len());
        let area = self.kernel[0] * self.kernel[1];
        self.init.fill(w, self.in_channels * area, self.out_channels * area, rng);
        b.fill(T::ZERO);
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let g = self.geom(input)?;
        Ok(if self.dims == 1 { vec![g.cout, g.ow] } else { vec![g.cout, g.oh, g.ow] })
    }

    fn layouts(&self) -> Layouts {
        Layouts::Convert
    }

    fn scratch_len(&self, n: usize, in_shape: &[usize], training: bool) -> usize {
        match self.geom(in_shape) {
            Ok(g) => {
                let l = lens(&g, Tiles::<T>::detect().lanes(), n);
                if training {
                    l.iter().sum()
                } else {
                    l[0] + l[1]
                }
            }
            Err(_) => 0,
        }
    }

    fn flops(&self, in_shape: &[usize]) -> usize {
        match self.geom(in_shape) {
            Ok(g) => 6 * g.cout * g.k() * g.oh * g.ow,
            Err(_) => 0,
        }
    }

    fn forward(&self, f: Forward<'_, T>) {
        let Ok(g) = self.geom(f.in_shape) else { return };
        let tiles = Tiles::<T>::detect();
        let lanes = tiles.lanes();
        let n = f.n;
        let parts = split(f.scratch, &g, lanes, n);
        let (w, b) = f.params.split_at(self.weight_len());
        k::pack_forward(&g, lanes, w, parts.panel);
        let panel = &*parts.panel;
        let bias = if self.bias { Some(b) } else { None };
        let (x, act, (lin, lout)) = (f.x, self.act, (f.in_layout, f.out_layout));
        let (in_len, out_len) = (numel(f.in_shape), numel(f.out_shape));
        par_chunks2(&mut f.y[..n * out_len], out_len, parts.xp, g.xp_len(), |i, y, xp| {
            k::pad_input(&g, lin, &x[i * in_len..(i + 1) * in_len], xp);
            k::forward_sample(&g, &tiles, xp, panel, bias, act, lout, y);
        });
    }

    fn backward(&self, b: Backward<'_, T>) {
        let Ok(g) = self.geom(b.in_shape) else { return };
        let tiles = Tiles::<T>::detect();
        let lanes = tiles.lanes();
        let n = b.n;
        let parts = split(b.scratch, &g, lanes, n);
        let layout = g.grad_layout(lanes, b.dx.is_some());
        let zlen = layout.len();
        let (in_len, out_len) = (numel(b.in_shape), numel(b.out_shape));
        let (y, act) = (b.y, self.act);
        let (w, _) = b.params.split_at(self.weight_len());
        let dz = &mut parts.dz[..n * zlen];
        let dy = &mut b.dy[..n * out_len];
        let (lin, lout) = (b.in_layout, b.out_layout);
        let grad_of = |i: usize, dy: &mut [T], dz: &mut [T]| {
            k::pad_grad(&g, &layout, lout, act, &y[i * out_len..(i + 1) * out_len], dy, dz);
        };
        // The output gradient's channels-last copy (dy is overwritten with
        // dy * act'(y) on the way), then, per sample, the input gradient.
        par_chunks2(dy, out_len, dz, zlen, grad_of);
        if let Some(dx) = b.dx {
            k::pack_backward(&g, lanes, w, parts.panel_t);
            let (panel_t, dz) = (&*parts.panel_t, &*dz);
            par_chunks(&mut dx[..n * in_len], in_len, |i, dx| {
                k::input_grad_sample(&g, &tiles, &layout, &dz[i * zlen..(i + 1) * zlen], panel_t, lin, dx);
            });
        }
        // Weight and bias gradients: partial sums over fixed chunks of
        // samples, then added in chunk order.
        let (per, count) = Conv::partials(&g, lanes, n);
        let dwl = g.dw_len(lanes);
        let plen = dwl + g.cout.div_ceil(lanes) * lanes;
        let (xp, dz) = (&*parts.xp, &*dz);
        let (xlen, partials) = (g.xp_len(), &mut parts.partials[..count * plen]);
        par_chunks(partials, plen, |p, part| {
            let s0 = p * per;
            let m = per.min(n - s0);
            let (dw, db) = part.split_at_mut(dwl);
            k::weight_grad(&g, &tiles, &layout, m, &xp[s0 * xlen..], &dz[s0 * zlen..], dw, db);
        });
        let (first, rest) = partials.split_at_mut(plen);
        if count > 1 {
            let rest = &*rest;
            par_elems(first, count, |off, c| {
                for p in 0..count - 1 {
                    let src = &rest[p * plen + off..p * plen + off + c.len()];
                    for (d, &s) in c.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            });
        }
        let (gw, gb) = b.grads.split_at_mut(self.weight_len());
        k::unpack_weight_grad(&g, lanes, &first[..dwl], gw, b.accumulate);
        if self.bias {
            for (o, &v) in gb.iter_mut().zip(&first[dwl..dwl + g.cout]) {
                *o = if b.accumulate { *o + v } else { v };
            }
        }
    }

    fn fuse_activation(&mut self, act: Act) -> bool {
        if self.act == Act::Identity && act.derivative_from_output() {
            self.act = act;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Backward, Buffers, Forward, Layout};
    use crate::rng::Rng;

    /// Forward, weight/bias and input gradients of `conv(x)` in float64,
    /// by the definition (zeros outside the input).
    fn naive(g: &ConvGeom, n: usize, x: &[f64], w: &[f64], b: &[f64], dy: &[f64]) -> [Vec<f64>; 4] {
        let (khw, plane, oplane) = (g.kh * g.kw, g.h * g.w, g.oh * g.ow);
        let mut y = vec![0.0; n * g.cout * oplane];
        let mut dx = vec![0.0; n * g.cin * plane];
        let mut dw = vec![0.0; g.cout * g.cin * khw];
        let mut db = vec![0.0; g.cout];
        for s in 0..n {
            for co in 0..g.cout {
                for oh in 0..g.oh {
                    for ow in 0..g.ow {
                        let o = (s * g.cout + co) * oplane + oh * g.ow + ow;
                        let mut acc = b[co];
                        db[co] += dy[o];
                        for ci in 0..g.cin {
                            for kh in 0..g.kh {
                                for kw in 0..g.kw {
                                    let ih = (oh * g.sh + kh * g.dh) as isize - g.pt as isize;
                                    let iw = (ow * g.sw + kw * g.dw) as isize - g.pl as isize;
                                    if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                        continue;
                                    }
                                    let xi = (s * g.cin + ci) * plane + ih as usize * g.w + iw as usize;
                                    let wi = (co * g.cin + ci) * khw + kh * g.kw + kw;
                                    acc += x[xi] * w[wi];
                                    dx[xi] += dy[o] * w[wi];
                                    dw[wi] += dy[o] * x[xi];
                                }
                            }
                        }
                        y[o] = acc;
                    }
                }
            }
        }
        [y, dx, dw, db]
    }

    fn close<T: Float>(got: &[T], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            let a = a.to_f64();
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{i}]: {a} vs {b}");
        }
    }

    /// Reorders each sample of `v` (`c` planes of `s` values) channels-last.
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

    /// Runs the layer's forward and backward (with and without `dx`)
    /// through the `Layer` API, in every combination of input and output
    /// layouts, and compares with [`naive`].
    fn check<T: Float>(conv: &Conv, input: &[usize], n: usize, tol: f64) {
        for lin in [Layout::Planar, Layout::ChannelsLast] {
            for lout in [Layout::Planar, Layout::ChannelsLast] {
                check_layouts::<T>(conv, input, n, tol, lin, lout);
            }
        }
    }

    fn check_layouts<T: Float>(conv: &Conv, input: &[usize], n: usize, tol: f64, lin: Layout, lout: Layout) {
        let g = conv.geom(input).expect("geometry");
        let layer: &dyn Layer<T> = conv;
        let out = layer.output_shape(input).expect("shape");
        let mut r = Rng::new(7);
        let mut draw = |len: usize| -> Vec<f64> { (0..len).map(|_| r.normal()).collect() };
        let (in_len, out_len) = (numel(input), numel(&out));
        let x = draw(n * in_len);
        let w = draw(conv.weight_len());
        let b = if conv.bias { draw(conv.out_channels) } else { vec![0.0; conv.out_channels] };
        let dy = draw(n * out_len);
        let [y_ref, dx_ref, dw_ref, db_ref] = naive(&g, n, &x, &w, &b, &dy);
        let cl = |v: &[f64], c: usize, s: usize, l: Layout| {
            if l == Layout::Planar {
                v.to_vec()
            } else {
                to_cl(v, c, s)
            }
        };
        let (sin, sout) = (g.h * g.w, g.oh * g.ow);
        let (x, dy) = (cl(&x, g.cin, sin, lin), cl(&dy, g.cout, sout, lout));
        let (y_ref, dx_ref) = (cl(&y_ref, g.cout, sout, lout), cl(&dx_ref, g.cin, sin, lin));
        let t = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
        let mut params = t(&w);
        if conv.bias {
            params.extend(t(&b));
        }
        let xs = t(&x);
        let mut scratch = vec![T::ZERO; layer.scratch_len(n, input, true)];
        let mut y = vec![T::ZERO; n * out_len];
        layer.forward(Forward {
            params: &params,
            buffers: Buffers::Frozen { values: &[], counts: &[] },
            x: &xs,
            y: &mut y,
            scratch: &mut scratch,
            n,
            in_shape: input,
            out_shape: &out,
            in_layout: lin,
            out_layout: lout,
            training: true,
            key: 0,
        });
        close(&y, &y_ref, tol, "y");
        for with_dx in [true, false] {
            let mut grads = vec![T::from_f64(0.5); params.len()];
            let mut dx = vec![T::from_f64(f64::NAN); n * in_len];
            let mut dys = t(&dy);
            layer.backward(Backward {
                params: &params,
                grads: &mut grads,
                accumulate: with_dx,
                buffers: &[],
                x: &xs,
                y: &y,
                dy: &mut dys,
                dx: if with_dx { Some(&mut dx) } else { None },
                scratch: &mut scratch,
                n,
                in_shape: input,
                out_shape: &out,
                in_layout: lin,
                out_layout: lout,
                key: 0,
            });
            let base = if with_dx { 0.5 } else { 0.0 };
            let dw_want: Vec<f64> = dw_ref.iter().map(|v| v + base).collect();
            close(&grads[..conv.weight_len()], &dw_want, tol, "dw");
            if conv.bias {
                let db_want: Vec<f64> = db_ref.iter().map(|v| v + base).collect();
                close(&grads[conv.weight_len()..], &db_want, tol, "db");
            }
            if with_dx {
                close(&dx, &dx_ref, tol, "dx");
            }
        }
    }

    fn conv2d(
        cin: usize,
        cout: usize,
        k: [usize; 2],
        s: [usize; 2],
        p: Padding<[usize; 2]>,
        d: [usize; 2],
    ) -> Conv {
        Conv::new("Conv2D", cin, cout, k, s, p, d, true, Init::He).expect("conv")
    }

    #[test]
    fn matches_the_definition_across_geometries() {
        let e = Padding::Explicit;
        let cases: Vec<(Conv, Vec<usize>, usize)> = vec![
            (conv2d(1, 32, [5, 5], [1, 1], Padding::Same, [1, 1]), vec![1, 12, 12], 3),
            (conv2d(32, 64, [5, 5], [1, 1], Padding::Same, [1, 1]), vec![32, 7, 7], 2),
            (conv2d(3, 5, [3, 3], [2, 2], e([1, 1]), [1, 1]), vec![3, 9, 8], 2),
            (conv2d(2, 3, [3, 2], [1, 2], e([0, 1]), [2, 1]), vec![2, 7, 5], 1),
            (conv2d(17, 40, [1, 1], [1, 1], Padding::Valid, [1, 1]), vec![17, 3, 4], 2),
            (conv2d(4, 6, [4, 4], [1, 1], Padding::Same, [1, 1]), vec![4, 6, 5], 2),
            (conv2d(3, 4, [3, 3], [2, 3], e([2, 0]), [2, 2]), vec![3, 11, 13], 3),
            (conv2d(5, 2, [2, 3], [3, 1], e([0, 0]), [1, 3]), vec![5, 8, 9], 1),
            (conv2d(2, 33, [3, 3], [1, 1], e([3, 3]), [1, 1]), vec![2, 4, 4], 2),
            (
                Conv::new("Conv1D", 3, 18, [1, 5], [1, 2], e([0, 2]), [1, 2], true, Init::He)
                    .expect("conv1d"),
                vec![3, 23],
                2,
            ),
            (
                Conv::new("Conv2D", 6, 16, [3, 3], [1, 1], e([1, 1]), [1, 1], false, Init::He).expect("nb"),
                vec![6, 5, 6],
                4,
            ),
        ];
        for baseline in [false, true] {
            crate::kernels::conv::FORCE_BASELINE.with(|f| f.set(baseline));
            for (conv, input, n) in &cases {
                check::<f64>(conv, input, *n, 1e-10);
                check::<f32>(conv, input, *n, 2e-4);
            }
        }
        crate::kernels::conv::FORCE_BASELINE.with(|f| f.set(false));
    }

    #[test]
    fn shapes_and_errors() {
        let c = conv2d(1, 8, [5, 5], [1, 1], Padding::Valid, [1, 1]);
        assert_eq!(Layer::<f32>::output_shape(&c, &[1, 28, 28]).unwrap(), [8, 24, 24]);
        let err = |input: &[usize]| Layer::<f32>::output_shape(&c, input).unwrap_err().message;
        assert!(err(&[28, 28]).contains("expects inputs of shape (N, C, H, W) with C = 1"));
        assert!(err(&[3, 28, 28]).contains("got 3 channels"));
        assert!(
            err(&[1, 4, 28]).contains("kernel spans 5x5 (after dilation) but the padded input is only 4x28")
        );
        let dilated = conv2d(1, 8, [3, 3], [1, 1], Padding::Explicit([1, 1]), [3, 3]);
        assert_eq!(Layer::<f32>::output_shape(&dilated, &[1, 5, 5]).unwrap(), [8, 1, 1]);
        assert!(Layer::<f32>::output_shape(&dilated, &[1, 4, 5]).unwrap_err().message.contains("spans 7x7"));
        assert!(Conv::new("Conv2D", 0, 8, [3, 3], [1, 1], Padding::Valid, [1, 1], true, Init::He).is_err());
        assert!(Conv::new("Conv2D", 1, 8, [3, 0], [1, 1], Padding::Valid, [1, 1], true, Init::He).is_err());
        let msg = Conv::new("Conv1D", 1, 8, [1, 3], [1, 2], Padding::Same, [1, 1], true, Init::He)
            .unwrap_err()
            .message;
        assert_eq!(msg, "Conv1D: padding=\"same\" needs stride 1 (as in torch), got stride 2");
        // "same" keeps the size, an even kernel padding more on the far side (as torch).
        let even = conv2d(1, 2, [4, 4], [1, 1], Padding::Same, [1, 1]);
        assert_eq!(even.pads(), [1, 1, 2, 2]);
        assert_eq!(Layer::<f32>::output_shape(&even, &[1, 9, 7]).unwrap(), [2, 9, 7]);
    }
}
