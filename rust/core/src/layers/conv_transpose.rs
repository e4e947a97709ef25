//! Transposed convolution, like `torch.nn.ConvTranspose2d` on `(C, H, W)`:
//! weight `(in, out, kh, kw)`, bias `(out)`, output
//! `(H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1`
//! rows (likewise columns).
//!
//! A transposed convolution is the input gradient of the convolution
//! `out -> in` with the same weight tensor (torch's `Conv2d` weight is
//! `(out, in, kh, kw)`, so the shapes agree as they are). This layer runs
//! that convolution's kernels (`kernels::conv`) on its *adjoint geometry*
//! ([`ConvTranspose::geom`]: the layer's output is the convolution's input
//! and the layer's input its output):
//! - forward: the convolution's input gradient of `x`;
//! - input gradient: the convolution's forward pass of `dy`;
//! - weight gradient: the convolution's weight gradient, with `dy` as its
//!   input and `x` as its output gradient.
//!
//! The scratch keeps, from the forward pass to the backward pass, the
//! channels-last copy of `x` the input-gradient kernel reads (the weight
//! gradient reads it too).

use super::{numel, Backward, Forward, Init, Layer, LayerConfig, Layout, Layouts, ParamDecl};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::activation::Act;
use crate::kernels::conv::{self as k, ConvGeom, Tiles};
use crate::kernels::{par_chunks, par_chunks2, par_elems};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// `ConvTranspose2D`'s configuration: `torch.nn.ConvTranspose2d`'s
/// arguments (plus `init`); weight `(in, out, kh, kw)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvTranspose2DSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub output_padding: [usize; 2],
    pub dilation: [usize; 2],
    pub bias: bool,
    pub init: Init,
}

impl LayerConfig for ConvTranspose2DSpec {
    const NAME: &'static str = "ConvTranspose2D";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(ConvTranspose::new(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
            self.bias,
            self.init,
        )?))
    }
}

/// A 2-D transposed convolution ("deconvolution"), as `torch.nn.ConvTranspose2d`.
#[derive(Clone, Debug)]
pub struct ConvTranspose {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub output_padding: [usize; 2],
    pub dilation: [usize; 2],
    pub bias: bool,
    pub init: Init,
}

const NAME: &str = "ConvTranspose2D";
/// Most partial weight gradients summed in order (fixed chunks of samples).
const MAX_PARTIALS: usize = 16;
/// Most elements all partial weight gradients of one layer may take.
const MAX_PARTIAL_ELEMS: usize = 1 << 24;

fn pair(v: [usize; 2]) -> String {
    format!("({}, {})", v[0], v[1])
}

impl ConvTranspose {
    /// Checks the configuration as torch does (when the layer is created,
    /// rather than at the first call).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        output_padding: [usize; 2],
        dilation: [usize; 2],
        bias: bool,
        init: Init,
    ) -> Result<Self> {
        for (what, v) in [("in_channels", in_channels), ("out_channels", out_channels)] {
            if v == 0 {
                return Err(Error::value(format!("{NAME}: {what} must be >= 1, got 0")));
            }
        }
        for (what, v) in [("kernel_size", kernel), ("stride", stride), ("dilation", dilation)] {
            if v.contains(&0) {
                return Err(Error::value(format!("{NAME}: {what} must be >= 1, got {}", pair(v))));
            }
        }
        if (0..2).any(|i| output_padding[i] >= stride[i].max(dilation[i])) {
            return Err(Error::value(format!(
                "{NAME}: output_padding must be smaller than either stride or dilation (as in torch), \
                 got output_padding {}, stride {}, dilation {}",
                pair(output_padding),
                pair(stride),
                pair(dilation)
            )));
        }
        Ok(ConvTranspose {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            output_padding,
            dilation,
            bias,
            init,
        })
    }

    fn weight_len(&self) -> usize {
        self.in_channels * self.out_channels * self.kernel[0] * self.kernel[1]
    }

    /// The adjoint convolution's geometry for a per-sample input shape
    /// `(in_channels, H, W)`, or why it does not fit: a convolution from
    /// `out_channels` to `in_channels` channels whose input is this layer's
    /// output (`h x w`) and whose output is this layer's input (`oh x ow`).
    pub fn geom(&self, input: &[usize]) -> Result<ConvGeom> {
        let &[c, h, w] = input else {
            return Err(Error::shape(format!(
                "{NAME} expects inputs of shape (N, C, H, W) with C = {}, got per-sample shape {input:?}",
                self.in_channels
            )));
        };
        if c != self.in_channels {
            return Err(Error::shape(format!(
                "{NAME} expects inputs of shape (N, C, H, W) with C = {}, got {c} channels (per-sample \
                 shape {input:?})",
                self.in_channels
            )));
        }
        // (i - 1) * s + d * (k - 1) + op + 1 - 2 * p, in checked arithmetic.
        let size = |i: usize, d: usize| -> Option<usize> {
            let full = (i.checked_sub(1)?)
                .checked_mul(self.stride[d])?
                .checked_add(self.dilation[d].checked_mul(self.kernel[d] - 1)?)?
                .checked_add(self.output_padding[d] + 1)?;
            full.checked_sub(self.padding[d].checked_mul(2)?).filter(|&o| o > 0)
        };
        let (Some(oh), Some(ow)) = (size(h, 0), size(w, 1)) else {
            return Err(Error::shape(format!(
                "{NAME}: the output would be empty: (H - 1) * stride - 2 * padding + dilation * (kernel_size \
                 - 1) + output_padding + 1 is not >= 1 for an input of {h}x{w} (per-sample shape {input:?}, \
                 stride {}, padding {}, dilation {}, kernel_size {}, output_padding {})",
                pair(self.stride),
                pair(self.padding),
                pair(self.dilation),
                pair(self.kernel),
                pair(self.output_padding)
            )));
        };
        Ok(ConvGeom {
            cin: self.out_channels,
            cout: self.in_channels,
            h: oh,
            w: ow,
            kh: self.kernel[0],
            kw: self.kernel[1],
            sh: self.stride[0],
            sw: self.stride[1],
            dh: self.dilation[0],
            dw: self.dilation[1],
            pt: self.padding[0],
            pl: self.padding[1],
            // Enough rows and columns that every tap of the `h x w` outputs
            // lies inside the padded input (the output padding adds the
            // rest on the far side).
            pb: self.padding[0].saturating_sub(self.output_padding[0]),
            pr: self.padding[1].saturating_sub(self.output_padding[1]),
            oh: h,
            ow: w,
        })
    }

    /// Samples per partial weight gradient and the number of partials for
    /// a batch of `n` (fixed by the shape, never by the thread count).
    fn partials(g: &ConvGeom, lanes: usize, n: usize) -> (usize, usize) {
        let most = (MAX_PARTIAL_ELEMS / Self::partial_len(g, lanes).max(1)).clamp(1, MAX_PARTIALS);
        let per = n.div_ceil(most).max(1);
        (per, n.div_ceil(per).max(1))
    }

    /// One partial: the kernels' weight gradient, the adjoint convolution's
    /// bias gradient (which the kernel writes; unused), this layer's bias
    /// gradient.
    fn partial_len(g: &ConvGeom, lanes: usize) -> usize {
        g.dw_len(lanes) + g.cout.div_ceil(lanes) * lanes + g.cin
    }
}

/// Scratch lengths, in order: the channels-last copies of the inputs and
/// the input-gradient panel (for any forward pass); then, for training
/// only, the forward panel, the padded copies of the output gradients, and
/// the partial weight and bias gradients.
fn lens(g: &ConvGeom, lanes: usize, n: usize) -> [usize; 5] {
    let (_, count) = ConvTranspose::partials(g, lanes, n);
    [
        n * g.grad_layout(lanes, true).len(),
        g.panel_t_len(lanes),
        g.panel_len(lanes),
        n * g.xp_len(),
        count * ConvTranspose::partial_len(g, lanes),
    ]
}

struct Parts<'a, T> {
    zx: &'a mut [T],
    panel_t: &'a mut [T],
    panel: &'a mut [T],
    xp: &'a mut [T],
    partials: &'a mut [T],
}

/// The parts of a scratch (the training parts empty if it was sized for
/// evaluation).
fn split<'a, T>(s: &'a mut [T], g: &ConvGeom, lanes: usize, n: usize) -> Parts<'a, T> {
    let [a, b, c, d, e] = lens(g, lanes, n);
    let (zx, s) = s.split_at_mut(a);
    let (panel_t, s) = s.split_at_mut(b);
    let rest = s.len().min(c + d + e);
    let (panel, s) = s[..rest].split_at_mut(c.min(rest));
    let (xp, s) = s.split_at_mut(d.min(s.len()));
    let e = e.min(s.len());
    Parts { zx, panel_t, panel, xp, partials: &mut s[..e] }
}

/// Adds `bias[c]` to every value of channel `c` of one sample `(c, s)`.
fn add_bias<T: Float>(y: &mut [T], bias: &[T], spatial: usize, layout: Layout) {
    match layout {
        Layout::Planar => {
            for (plane, &b) in y.chunks_exact_mut(spatial).zip(bias) {
                plane.iter_mut().for_each(|v| *v += b);
            }
        }
        Layout::ChannelsLast => {
            for pos in y.chunks_exact_mut(bias.len()) {
                pos.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
            }
        }
    }
}

/// Adds each channel's sum over one sample `(c, s)` into `sums`, in a fixed order.
fn add_channel_sums<T: Float>(dy: &[T], sums: &mut [T], spatial: usize, layout: Layout) {
    match layout {
        Layout::Planar => {
            for (plane, s) in dy.chunks_exact(spatial).zip(sums.iter_mut()) {
                *s += plane.iter().fold(T::ZERO, |a, &v| a + v);
            }
        }
        Layout::ChannelsLast => {
            for pos in dy.chunks_exact(sums.len()) {
                sums.iter_mut().zip(pos).for_each(|(s, &v)| *s += v);
            }
        }
    }
}

impl<T: Float> Layer<T> for ConvTranspose {
    fn name(&self) -> &'static str {
        NAME
    }

    fn params(&self) -> Vec<ParamDecl> {
        let mut shape = vec![self.in_channels, self.out_channels];
        shape.extend_from_slice(&self.kernel);
        let mut v = vec![ParamDecl { name: "weight", shape }];
        if self.bias {
            v.push(ParamDecl { name: "bias", shape: vec![self.out_channels] });
        }
        v
    }

    /// As [`super::Conv`], with the fans torch computes from the weight's
    /// shape `(in, out, kh, kw)`: `fan_in = out * area`, `fan_out = in * area`.
    fn init_params(&self, params: &mut [T], rng: &mut Rng) {
        let (w, b) = params.split_at_mut(self.weight_len());
        let area = self.kernel[0] * self.kernel[1];
        self.init.fill(w, self.out_channels * area, self.in_channels * area, rng);
        b.fill(T::ZERO);
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let g = self.geom(input)?;
        Ok(vec![self.out_channels, g.h, g.w])
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
        let layout = g.grad_layout(lanes, true);
        let zlen = layout.len();
        let (w, b) = f.params.split_at(self.weight_len());
        k::pack_backward(&g, lanes, w, parts.panel_t);
        let panel_t = &*parts.panel_t;
        let bias = if self.bias { Some(&b[..self.out_channels]) } else { None };
        let (x, (lin, lout)) = (f.x, (f.in_layout, f.out_layout));
        let (in_len, out_len, spatial) = (numel(f.in_shape), numel(f.out_shape), g.h * g.w);
        par_chunks2(&mut f.y[..n * out_len], out_len, &mut parts.zx[..n * zlen], zlen, |i, y, zx| {
            k::pad_output(&g, &layout, lin, &x[i * in_len..(i + 1) * in_len], zx, true);
            k::input_grad_sample(&g, &tiles, &layout, zx, panel_t, lout, y);
            if let Some(b) = bias {
                add_bias(y, b, spatial, lout);
            }
        });
    }

    fn backward(&self, b: Backward<'_, T>) {
        let Ok(g) = self.geom(b.in_shape) else { return };
        let tiles = Tiles::<T>::detect();
        let lanes = tiles.lanes();
        let n = b.n;
        let parts = split(b.scratch, &g, lanes, n);
        let layout = g.grad_layout(lanes, true);
        let (zlen, xlen) = (layout.len(), g.xp_len());
        let (in_len, out_len, spatial) = (numel(b.in_shape), numel(b.out_shape), g.h * g.w);
        let (lin, lout) = (b.in_layout, b.out_layout);
        let (w, _) = b.params.split_at(self.weight_len());
        let dy = &b.dy[..n * out_len];
        let xp = &mut parts.xp[..n * xlen];
        // The output gradient as the adjoint convolution's padded
        // channels-last input; with it, per sample, the input gradient (that
        // convolution's forward pass).
        match b.dx {
            Some(dx) => {
                k::pack_forward(&g, lanes, w, parts.panel);
                let panel = &*parts.panel;
                par_chunks2(&mut dx[..n * in_len], in_len, xp, xlen, |i, dx, xp| {
                    k::pad_input(&g, lout, &dy[i * out_len..(i + 1) * out_len], xp);
                    k::forward_sample(&g, &tiles, xp, panel, None, Act::Identity, lin, dx);
                });
            }
            None => par_chunks(xp, xlen, |i, xp| {
                k::pad_input(&g, lout, &dy[i * out_len..(i + 1) * out_len], xp);
            }),
        }
        // Weight and bias gradients: partial sums over fixed chunks of
        // samples, then added in chunk order.
        let (per, count) = ConvTranspose::partials(&g, lanes, n);
        let plen = ConvTranspose::partial_len(&g, lanes);
        let dwl = g.dw_len(lanes);
        let cpad = g.cout.div_ceil(lanes) * lanes;
        let (xp, zx) = (&*xp, &*parts.zx);
        let partials = &mut parts.partials[..count * plen];
        let with_bias = self.bias;
        par_chunks(partials, plen, |p, part| {
            let s0 = p * per;
            let m = per.min(n - s0);
            let (dw, rest) = part.split_at_mut(dwl);
            let (db_adjoint, db) = rest.split_at_mut(cpad);
            k::weight_grad(&g, &tiles, &layout, m, &xp[s0 * xlen..], &zx[s0 * zlen..], dw, db_adjoint);
            db.fill(T::ZERO);
            if with_bias {
                for s in s0..s0 + m {
                    add_channel_sums(&dy[s * out_len..(s + 1) * out_len], db, spatial, lout);
                }
            }
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
            for (o, &v) in gb.iter_mut().zip(&first[dwl + cpad..dwl + cpad + g.cin]) {
                *o = if b.accumulate { *o + v } else { v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Backward, Buffers, Forward, Layout};
    use crate::rng::Rng;

    type Case = ([usize; 2], [usize; 2], [usize; 2], [usize; 2], [usize; 2]);

    /// Forward, input and weight/bias gradients of the transposed
    /// convolution in float64, by torch's definition: input `(i, h, w)`
    /// scatters `x * weight[i, o, kh, kw]` into output row `h * s + kh * d - p`.
    fn naive(
        t: &ConvTranspose,
        input: &[usize],
        n: usize,
        x: &[f64],
        w: &[f64],
        b: &[f64],
        dy: &[f64],
    ) -> [Vec<f64>; 4] {
        let out = Layer::<f64>::output_shape(t, input).expect("shape");
        let (ci, h, wd) = (input[0], input[1], input[2]);
        let (co, oh, ow) = (out[0], out[1], out[2]);
        let (kh, kw) = (t.kernel[0], t.kernel[1]);
        let mut y = vec![0.0; n * co * oh * ow];
        let mut dx = vec![0.0; n * ci * h * wd];
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; co];
        for s in 0..n {
            for o in 0..co {
                for p in 0..oh * ow {
                    let at = (s * co + o) * oh * ow + p;
                    y[at] = b[o];
                    db[o] += dy[at];
                }
            }
            for i in 0..ci {
                for r in 0..h {
                    for c in 0..wd {
                        let xi = ((s * ci + i) * h + r) * wd + c;
                        for o in 0..co {
                            for a in 0..kh {
                                for e in 0..kw {
                                    let yr = (r * t.stride[0] + a * t.dilation[0]) as isize
                                        - t.padding[0] as isize;
                                    let yc = (c * t.stride[1] + e * t.dilation[1]) as isize
                                        - t.padding[1] as isize;
                                    if yr < 0 || yc < 0 || yr >= oh as isize || yc >= ow as isize {
                                        continue;
                                    }
                                    let yi = ((s * co + o) * oh + yr as usize) * ow + yc as usize;
                                    let wi = ((i * co + o) * kh + a) * kw + e;
                                    y[yi] += x[xi] * w[wi];
                                    dx[xi] += dy[yi] * w[wi];
                                    dw[wi] += dy[yi] * x[xi];
                                }
                            }
                        }
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

    fn check<T: Float>(t: &ConvTranspose, input: &[usize], n: usize, tol: f64) {
        for lin in [Layout::Planar, Layout::ChannelsLast] {
            for lout in [Layout::Planar, Layout::ChannelsLast] {
                check_layouts::<T>(t, input, n, tol, lin, lout);
            }
        }
    }

    fn check_layouts<T: Float>(
        t: &ConvTranspose,
        input: &[usize],
        n: usize,
        tol: f64,
        lin: Layout,
        lout: Layout,
    ) {
        let layer: &dyn Layer<T> = t;
        let out = layer.output_shape(input).expect("shape");
        let mut r = Rng::new(11);
        let mut draw = |len: usize| -> Vec<f64> { (0..len).map(|_| r.normal()).collect() };
        let (in_len, out_len) = (numel(input), numel(&out));
        let x = draw(n * in_len);
        let w = draw(t.weight_len());
        let b = if t.bias { draw(t.out_channels) } else { vec![0.0; t.out_channels] };
        let dy = draw(n * out_len);
        let [y_ref, dx_ref, dw_ref, db_ref] = naive(t, input, n, &x, &w, &b, &dy);
        let cl = |v: &[f64], c: usize, s: usize, l: Layout| {
            if l == Layout::Planar {
                v.to_vec()
            } else {
                to_cl(v, c, s)
            }
        };
        let (sin, sout) = (input[1] * input[2], out[1] * out[2]);
        let (ci, co) = (t.in_channels, t.out_channels);
        let (x, dy) = (cl(&x, ci, sin, lin), cl(&dy, co, sout, lout));
        let (y_ref, dx_ref) = (cl(&y_ref, co, sout, lout), cl(&dx_ref, ci, sin, lin));
        let tv = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
        let mut params = tv(&w);
        if t.bias {
            params.extend(tv(&b));
        }
        let xs = tv(&x);
        // Stale values in the scratch and the output must not matter.
        let mut scratch = vec![T::from_f64(f64::NAN); layer.scratch_len(n, input, true)];
        let mut y = vec![T::from_f64(f64::NAN); n * out_len];
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
            let mut dys = tv(&dy);
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
            close(&grads[..t.weight_len()], &dw_want, tol, "dw");
            if t.bias {
                let db_want: Vec<f64> = db_ref.iter().map(|v| v + base).collect();
                close(&grads[t.weight_len()..], &db_want, tol, "db");
            }
            if with_dx {
                close(&dx, &dx_ref, tol, "dx");
            }
        }
    }

    fn layer(cin: usize, cout: usize, (k, s, p, op, d): Case, bias: bool) -> ConvTranspose {
        ConvTranspose::new(cin, cout, k, s, p, op, d, bias, Init::He).expect("valid")
    }

    #[test]
    fn matches_the_definition_across_geometries() {
        let cases: Vec<(ConvTranspose, Vec<usize>, usize)> = vec![
            // U-Net upsampling: k=2 s=2, and k=3 s=2 p=1 op=1.
            (layer(4, 3, ([2, 2], [2, 2], [0, 0], [0, 0], [1, 1]), true), vec![4, 5, 6], 3),
            (layer(5, 2, ([3, 3], [2, 2], [1, 1], [1, 1], [1, 1]), true), vec![5, 4, 3], 2),
            (layer(3, 4, ([3, 3], [1, 1], [0, 0], [0, 0], [1, 1]), true), vec![3, 4, 4], 2),
            (layer(2, 3, ([3, 2], [2, 3], [2, 1], [1, 2], [1, 2]), false), vec![2, 5, 4], 2),
            // Output padding below the dilation but not the stride.
            (layer(2, 2, ([3, 3], [1, 2], [0, 1], [1, 0], [2, 1]), true), vec![2, 3, 4], 1),
            // Padding larger than the kernel's reach: taps cropped away.
            (layer(3, 2, ([2, 2], [3, 3], [2, 3], [0, 2], [1, 1]), true), vec![3, 4, 5], 2),
            (layer(17, 33, ([4, 4], [2, 2], [1, 1], [0, 0], [1, 1]), true), vec![17, 3, 3], 2),
            (layer(1, 1, ([1, 1], [1, 1], [0, 0], [0, 0], [1, 1]), true), vec![1, 1, 1], 1),
            (layer(6, 40, ([5, 3], [3, 1], [2, 0], [2, 0], [1, 3]), true), vec![6, 2, 3], 5),
        ];
        for baseline in [false, true] {
            crate::kernels::conv::FORCE_BASELINE.with(|f| f.set(baseline));
            for (t, input, n) in &cases {
                check::<f64>(t, input, *n, 1e-10);
                check::<f32>(t, input, *n, 2e-4);
            }
        }
        crate::kernels::conv::FORCE_BASELINE.with(|f| f.set(false));
    }

    #[test]
    fn shapes_and_errors() {
        let t = layer(4, 2, ([3, 3], [2, 2], [1, 1], [1, 1], [1, 1]), true);
        assert_eq!(Layer::<f32>::output_shape(&t, &[4, 14, 14]).unwrap(), [2, 28, 28]);
        let t2 = layer(4, 2, ([2, 2], [2, 2], [0, 0], [0, 0], [1, 1]), true);
        assert_eq!(Layer::<f32>::output_shape(&t2, &[4, 14, 7]).unwrap(), [2, 28, 14]);
        let err = |input: &[usize]| Layer::<f32>::output_shape(&t, input).unwrap_err().message;
        assert!(err(&[14, 14]).contains("expects inputs of shape (N, C, H, W) with C = 4"));
        assert!(err(&[3, 14, 14]).contains("got 3 channels"));
        let cropped = layer(1, 1, ([1, 1], [1, 1], [1, 0], [0, 0], [1, 1]), true);
        let msg = Layer::<f32>::output_shape(&cropped, &[1, 2, 5]).unwrap_err().message;
        assert!(msg.contains("the output would be empty") && msg.contains("input of 2x5"), "{msg}");
        let new = |k: [usize; 2], s: [usize; 2], op: [usize; 2], d: [usize; 2]| {
            ConvTranspose::new(1, 1, k, s, [0, 0], op, d, true, Init::He).map(drop).map_err(|e| e.message)
        };
        let msg = new([3, 3], [2, 2], [2, 0], [1, 1]).unwrap_err();
        assert_eq!(
            msg,
            "ConvTranspose2D: output_padding must be smaller than either stride or dilation (as in torch), \
             got output_padding (2, 0), stride (2, 2), dilation (1, 1)"
        );
        assert!(new([3, 3], [1, 1], [1, 1], [2, 2]).is_ok());
        assert!(new([3, 0], [1, 1], [0, 0], [1, 1]).unwrap_err().contains("kernel_size must be >= 1"));
        assert!(new([3, 3], [0, 1], [0, 0], [1, 1]).unwrap_err().contains("stride must be >= 1"));
        assert!(ConvTranspose::new(0, 1, [1, 1], [1, 1], [0, 0], [0, 0], [1, 1], true, Init::He).is_err());
        let p = Layer::<f32>::params(&t);
        assert_eq!(p[0].shape, [4, 2, 3, 3]);
        assert_eq!(p[1].shape, [2]);
    }
}
